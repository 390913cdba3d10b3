"""The networks and the saved-model format."""

from __future__ import annotations

import pytest
import torch

from stages.errors import StageError
from stages.model import FRAME, NETS, build_model, load_model, predict_log_probs, save_model


def test_seed_net_is_the_notebook_net():
    shapes = {name: tuple(p.shape) for name, p in build_model("seed").named_parameters()}
    assert shapes == {
        "conv1.weight": (10, 1, 5, 5), "conv1.bias": (10,),
        "conv2.weight": (20, 10, 5, 5), "conv2.bias": (20,),
        "fc1.weight": (50, 320), "fc1.bias": (50,),
        "fc2.weight": (10, 50), "fc2.bias": (10,),
    }
    model = build_model("seed")
    assert isinstance(model.conv2_drop, torch.nn.Dropout2d)


def test_compact_net_has_16k_parameters():
    assert sum(p.numel() for p in build_model("compact").parameters()) == 16186


def test_compact_net_ignores_the_blank_frame_of_mnist():
    model = build_model("compact").eval()
    images = torch.randn(4, 1, 28, 28)
    framed = images.clone()
    framed[..., :FRAME, :] = 9.0
    framed[..., -FRAME:, :] = -9.0
    framed[..., :, :FRAME] = 3.0
    framed[..., :, -FRAME:] = -3.0
    inner = images.clone()
    inner[..., 14, 14] += 1.0
    with torch.no_grad():
        assert torch.equal(model(framed), model(images))
        assert not torch.equal(model(inner), model(images))


@pytest.mark.parametrize("net", sorted(NETS))
def test_nets_output_log_probabilities(net):
    model = build_model(net).eval()
    with torch.no_grad():
        out = model(torch.randn(7, 1, 28, 28))
    assert out.shape == (7, 10)
    assert torch.allclose(out.exp().sum(1), torch.ones(7), atol=1e-5)


@pytest.mark.parametrize("net", sorted(NETS))
def test_saved_model_round_trips(tmp_path, net):
    model = build_model(net).eval()
    save_model(tmp_path / "model.pt", net, model, 0.5, 0.25)
    loaded, saved = load_model(tmp_path / "model.pt")
    images = torch.randn(5, 1, 28, 28)
    assert torch.equal(predict_log_probs(loaded, images, 5), predict_log_probs(model, images, 5))
    assert (saved["mean"], saved["std"]) == (0.5, 0.25)
    assert not loaded.training


def test_load_model_refuses_foreign_and_mismatched_files(tmp_path):
    torch.save({"net": "resnet", "state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(StageError, match="not a model saved by the train stage"):
        load_model(tmp_path / "foreign.pt")
    save_model(tmp_path / "seed.pt", "seed", build_model("seed"), 0.1, 0.3)
    saved = torch.load(tmp_path / "seed.pt", weights_only=True)
    saved["net"] = "compact"
    torch.save(saved, tmp_path / "swapped.pt")
    with pytest.raises(StageError, match="do not fit net 'compact'"):
        load_model(tmp_path / "swapped.pt")


def test_load_model_refuses_pickled_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"net": "compact", "payload": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(StageError, match=r"evil\.pt: unreadable or corrupt"):
        load_model(tmp_path / "evil.pt")
