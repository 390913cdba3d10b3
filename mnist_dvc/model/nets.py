"""The networks, registered by name for ``model.net``; scoring; the saved-model format."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mnist_dvc.config.schema import PARAMS_FILE, ParamsError
from mnist_dvc.data.prepared import Normalization
from mnist_dvc.errors import StageError
from mnist_dvc.model.torch_files import torch_load_verified, torch_save_verified

FRAME = 2  # pixels cropped from each edge by CompactNet
MODEL_KIND = "mnist-dvc model"
CHECKPOINT_KIND = "mnist-dvc training state"


class CompactNet(nn.Module):
    """16k parameters: a crop, two conv-pool-BatchNorm-relu blocks and one linear layer.

    MNIST's digits were scaled into a 20x20 box and centred in the 28x28 image, so its
    2-pixel frame holds 0.3 % of the ink: cropping it saves 40 % of the arithmetic at no
    measurable cost in accuracy. Pooling before BatchNorm and relu normalizes a quarter of
    the data (and max pooling commutes with relu). Convolutions have no bias: the BatchNorm
    after each has one.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 5, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.classifier = nn.Linear(32 * 3 * 3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, FRAME:-FRAME, FRAME:-FRAME]
        return F.log_softmax(self.classifier(self.features(x).flatten(1)), dim=1)


class SeedNet(nn.Module):
    """The seed notebook's network (the classic pytorch/examples MNIST net).

    Layers and computation are the notebook's; only ``x.view(-1, 320)`` became the equivalent
    ``x.flatten(1)``, which also accepts the channels-last layout (2x faster here).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, training=self.training)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


# The network registry: the one list of what ``model.net`` may name. A new network is a class
# above plus one line here (tests/test_model.py shows it end to end).
NETS: dict[str, type[nn.Module]] = {
    "compact": CompactNet,
    "seed": SeedNet,
}


def check_net(name: str, source: object = PARAMS_FILE) -> None:
    """A ParamsError unless ``name`` is in the registry (params.py cannot check it: download
    and preprocess read params without importing torch)."""
    if name not in NETS:
        allowed = ", ".join(repr(n) for n in NETS)
        raise ParamsError(f"{source}: model.net must be one of {allowed}, got {name!r}")


def build_model(net: str, device: torch.device | str = "cpu") -> nn.Module:
    """A freshly initialized ``net`` on ``device``.

    Channels-last: oneDNN's CPU convolutions and pooling run 1.5-2x faster in that layout.
    """
    check_net(net)
    return NETS[net]().to(device).to(memory_format=torch.channels_last)


@torch.inference_mode()
def predict_log_probs(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Log-probabilities for ``images`` (on the model's device), in large batches."""
    was_training = model.training
    model.eval()
    outputs = [model(images[start:start + batch_size])
               for start in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0, 10, device=images.device)


class Score(NamedTuple):
    log_probs: torch.Tensor
    loss: float      # mean negative log-likelihood
    accuracy: float


def score(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
          batch_size: int) -> Score:
    """How ``model`` does on labelled images; train and evaluate both score with this."""
    log_probs = predict_log_probs(model, images, batch_size)
    loss = F.nll_loss(log_probs, labels, reduction="sum").item() / len(labels)
    accuracy = (log_probs.argmax(1) == labels).float().mean().item()
    return Score(log_probs, loss, accuracy)


def save_model(path: Path, net: str, model: nn.Module, normalization: Normalization) -> None:
    """Save the weights with what is needed to use them: the net's name and the normalization
    of its inputs, verified as checkpoints are."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch_save_verified(path, {"kind": MODEL_KIND, "net": net, "state_dict": state,
                               "mean": normalization.mean, "std": normalization.std})


class SavedModel(NamedTuple):
    model: nn.Module
    net: str
    normalization: Normalization


def load_model(path: Path, device: torch.device | str = "cpu") -> SavedModel:
    """Load a model saved by ``save_model``: checksum first, then tensors and plain values only."""
    saved = torch_load_verified(path)
    kind = saved.get("kind") if isinstance(saved, dict) else None
    if kind != MODEL_KIND:
        what = "a training checkpoint" if kind == CHECKPOINT_KIND else "not a model file"
        raise StageError(f"{path}: {what}, not a model saved by the train stage "
                         "(that is data/model/model.pt)")
    if saved.get("net") not in NETS:
        raise StageError(f"{path}: net {saved.get('net')!r} is not in this code's registry")
    model = NETS[saved["net"]]().to(device).to(memory_format=torch.channels_last)
    try:
        model.load_state_dict(saved["state_dict"])
        normalization = Normalization(float(saved["mean"]), float(saved["std"]))
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise StageError(f"{path}: weights do not fit net '{saved['net']}': "
                         f"{str(err).splitlines()[0]}") from None
    return SavedModel(model.eval(), saved["net"], normalization)
