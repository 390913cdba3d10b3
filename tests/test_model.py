"""The networks and the saved-model format."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mnist_dvc.config.schema import ParamsError
from mnist_dvc.config.train import ModelParams
from mnist_dvc.data.prepared import Normalization
from mnist_dvc.data.spec import MNIST, DatasetSpec
from mnist_dvc.errors import StageError
from mnist_dvc.model.nets import (
    CHECKPOINT_KIND,
    MODEL_KIND,
    NETS,
    build_model,
    check_fits,
    check_net,
    load_model,
    predict_log_probs,
    save_model,
)
from mnist_dvc.model.torch_files import torch_save_verified
from stages.evaluate import evaluate
from stages.train import train
from tests.conftest import write_params


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


@pytest.mark.parametrize("net", sorted(NETS))
def test_every_registered_name_builds_its_own_class_ready_to_train(net):
    check_net(net)  # the name params.yaml may give
    model = build_model(net)
    assert type(model) is NETS[net] and model.training
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters()
               if p.dim() == 4)


@pytest.mark.parametrize("shape", [(28, 28), (24, 40)])
def test_compact_net_ignores_the_blank_frame_of_mnist(shape):
    model = build_model("compact", image_shape=shape).eval()
    (top, left) = model.frame
    assert (top, left) == tuple(round(side * 2 / 28) for side in shape)  # MNIST's 2 px of 28
    images = torch.randn(4, 1, *shape)
    framed = images.clone()
    framed[..., :top, :] = 9.0
    framed[..., -top:, :] = -9.0
    framed[..., :, :left] = 3.0
    framed[..., :, -left:] = -3.0
    inner = images.clone()
    inner[..., shape[0] // 2, shape[1] // 2] += 1.0
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
@pytest.mark.parametrize(("shape", "classes"), [((18, 18), 2), ((24, 32), 5), ((64, 64), 37)])
def test_nets_take_any_image_shape_and_class_count(net, shape, classes):
    model = build_model(net, image_shape=shape, num_classes=classes).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 1, *shape))
    assert out.shape == (3, classes)
    assert torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("net", sorted(NETS))
def test_images_too_small_for_a_net_are_one_line_naming_it(net):
    tiny = DatasetSpec("tiny", (8, 8), ("a", "b"))
    with pytest.raises(StageError, match=f"net '{net}' cannot take 8x8 images"):
        check_fits(net, tiny)
    generator_state = torch.random.get_rng_state()
    check_fits(net, DatasetSpec("wide", (18, 90), ("a", "b", "c")))
    assert torch.equal(torch.random.get_rng_state(), generator_state)  # weight init untouched


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("dataset", [MNIST, DatasetSpec("idx", (24, 20), ("cat", "dog", "emu"))],
                         ids=["mnist", "idx"])
def test_saved_model_round_trips(tmp_path, net, dataset):
    model = build_model(net, image_shape=dataset.image_shape,
                        num_classes=dataset.num_classes).eval()
    save_model(tmp_path / "model.pt", net, model, Normalization(0.5, 0.25), dataset)
    loaded = load_model(tmp_path / "model.pt")
    images = torch.randn(5, 1, *dataset.image_shape)
    assert torch.equal(predict_log_probs(loaded.model, images, 5),
                       predict_log_probs(model, images, 5))
    assert (loaded.net, loaded.normalization) == (net, (0.5, 0.25))
    assert (loaded.dataset.name, loaded.dataset.image_shape, loaded.dataset.class_names) == (
        dataset.name, dataset.image_shape, dataset.class_names)
    assert not loaded.model.training


def test_a_model_file_without_a_dataset_record_is_an_mnist_model(tmp_path):
    model = build_model("compact")
    state = {k: v.detach() for k, v in model.state_dict().items()}
    torch_save_verified(tmp_path / "old.pt", {"kind": MODEL_KIND, "net": "compact",
                                              "state_dict": state, "mean": 0.1, "std": 0.3})
    assert load_model(tmp_path / "old.pt").dataset == MNIST


def test_a_malformed_dataset_record_in_a_model_file_is_one_line(tmp_path):
    model = build_model("compact")
    save_model(tmp_path / "model.pt", "compact", model, Normalization(0.1, 0.3))
    from mnist_dvc.model.torch_files import torch_load_verified

    saved = torch_load_verified(tmp_path / "model.pt")
    saved["class_names"] = ["7"]
    torch_save_verified(tmp_path / "bad.pt", saved)
    with pytest.raises(StageError, match=r"bad\.pt: its dataset record is malformed"):
        load_model(tmp_path / "bad.pt")


def test_load_model_refuses_foreign_and_mismatched_files(tmp_path):
    torch_save_verified(tmp_path / "checkpoint.pt", {"kind": CHECKPOINT_KIND})
    with pytest.raises(StageError, match=r"checkpoint\.pt: a training checkpoint, not a model"):
        load_model(tmp_path / "checkpoint.pt")
    torch.save({"net": "compact", "state_dict": {}}, tmp_path / "plain.pt")
    with pytest.raises(StageError, match=r"plain\.pt: not a file written by this project"):
        load_model(tmp_path / "plain.pt")
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(StageError, match=r"notes\.txt: not a file written by this project"):
        load_model(tmp_path / "notes.txt")
    with pytest.raises(StageError, match=r": is a directory, not a file"):
        load_model(tmp_path)
    save_model(tmp_path / "seed.pt", "seed", build_model("seed"), Normalization(0.1, 0.3))
    from mnist_dvc.model.torch_files import torch_load_verified

    saved = torch_load_verified(tmp_path / "seed.pt")
    saved["net"] = "compact"
    torch_save_verified(tmp_path / "swapped.pt", saved)
    with pytest.raises(StageError, match="do not fit net 'compact'"):
        load_model(tmp_path / "swapped.pt")


def test_load_model_refuses_pickled_code_even_behind_a_true_checksum(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch_save_verified(tmp_path / "evil.pt", {"kind": "x", "payload": Payload()})
    with pytest.raises(StageError, match=r"evil\.pt: unreadable or corrupt"):
        load_model(tmp_path / "evil.pt")


def test_an_unknown_net_name_is_a_params_error_naming_the_registry(monkeypatch):
    monkeypatch.setitem(NETS, "tiny", TinyNet)
    with pytest.raises(ParamsError) as refused:
        check_net("resnet")
    message = str(refused.value)
    assert message.startswith("params.yaml: model.net must be one of ")
    assert message.endswith(", got 'resnet'") and "\n" not in message
    assert all(f"'{name}'" in message for name in NETS)  # the registry, a new net included
    with pytest.raises(ParamsError, match="got 'resnet'"):
        build_model("resnet")


class TinyNet(nn.Module):
    """A network a user adds: one class..."""

    def __init__(self, image_shape: tuple[int, int] = (28, 28), num_classes: int = 10) -> None:
        super().__init__()
        self.linear = nn.Linear(image_shape[0] * image_shape[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.linear(x.flatten(1)), dim=1)


def test_a_new_net_is_one_class_and_one_registry_line(project, tiny_params, monkeypatch):
    monkeypatch.setitem(NETS, "tiny", TinyNet)  # ...plus its line in the registry
    params = type(tiny_params)(train=tiny_params.train, evaluate=tiny_params.evaluate,
                               model=ModelParams(net="tiny"))
    write_params(project.params, params)

    history = train(params, project)
    metrics = evaluate(params.evaluate, project)

    assert history[-1]["test_acc"] > 0.5  # it learned the synthetic digits
    saved = load_model(project.model)
    assert saved.net == "tiny" and isinstance(saved.model, TinyNet)
    assert metrics["accuracy"] == pytest.approx(history[-1]["test_acc"], abs=1e-6)
