"""The networks, registered by name for ``model.net``; scoring; the saved-model format.

A network is built for a dataset's image shape and class count (mnist_dvc/data/spec.py):
``NETS[name](image_shape, num_classes)`` takes ``(N, 1, height, width)`` normalized images
and returns ``(N, num_classes)`` log-probabilities.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mnist_dvc.config.schema import PARAMS_FILE, ParamsError
from mnist_dvc.data.spec import MNIST, DatasetSpec, Normalization, spec_from_json
from mnist_dvc.errors import StageError
from mnist_dvc.model.torch_files import torch_load_verified, torch_save_verified

FRAME_SHARE = 1 / 14  # of each side, cropped by CompactNet: MNIST's empty 2 px of 28
MODEL_KIND = "mnist-dvc model"
CHECKPOINT_KIND = "mnist-dvc training state"
ImageShape = tuple[int, int]


def conv_pool_side(side: int, blocks: int, kernel: int = 5) -> int:
    """A side's length after ``blocks`` of an unpadded ``kernel`` convolution and a 2x2 pool."""
    for _ in range(blocks):
        side = max(0, side - kernel + 1) // 2
    return side


def too_small(net: str, image_shape: ImageShape, fits: bool) -> None:
    if not fits:
        height, width = image_shape
        raise StageError(f"net '{net}' cannot take {height}x{width} images: its convolutions "
                         "leave nothing of them (upscale the images or choose another model.net)")


class CompactNet(nn.Module):
    """16k parameters (on MNIST): a crop, two conv-pool-BatchNorm-relu blocks and one linear
    layer.

    MNIST's digits were scaled into a 20x20 box and centred in the 28x28 image, so its
    2-pixel frame holds 0.3 % of the ink: cropping it saves 40 % of the arithmetic at no
    measurable cost in accuracy. Other image sizes lose the same share of each side.
    Pooling before BatchNorm and relu normalizes a quarter of the data (and max pooling
    commutes with relu). Convolutions have no bias: the BatchNorm after each has one.
    """

    def __init__(self, image_shape: ImageShape = MNIST.image_shape,
                 num_classes: int = MNIST.num_classes) -> None:
        super().__init__()
        self.frame = tuple(round(side * FRAME_SHARE) for side in image_shape)
        self.cropped = tuple(side - 2 * frame
                             for side, frame in zip(image_shape, self.frame, strict=True))
        height, width = (conv_pool_side(side, 2) for side in self.cropped)
        too_small("compact", image_shape, height > 0 and width > 0)
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 5, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.classifier = nn.Linear(32 * height * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (top, left), (height, width) = self.frame, self.cropped
        x = x[:, :, top:top + height, left:left + width]
        return F.log_softmax(self.classifier(self.features(x).flatten(1)), dim=1)


class SeedNet(nn.Module):
    """The seed notebook's network (the classic pytorch/examples MNIST net).

    Layers and computation are the notebook's (for MNIST); only ``x.view(-1, 320)`` became the
    equivalent ``x.flatten(1)``, which also accepts the channels-last layout (2x faster here).
    Other image sizes and class counts change the sizes of the linear layers.
    """

    def __init__(self, image_shape: ImageShape = MNIST.image_shape,
                 num_classes: int = MNIST.num_classes) -> None:
        super().__init__()
        height, width = (conv_pool_side(side, 2) for side in image_shape)
        too_small("seed", image_shape, height > 0 and width > 0)
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(20 * height * width, 50)
        self.fc2 = nn.Linear(50, num_classes)

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


def build_model(net: str, device: torch.device | str = "cpu",
                image_shape: ImageShape = MNIST.image_shape,
                num_classes: int = MNIST.num_classes) -> nn.Module:
    """A freshly initialized ``net`` for ``image_shape`` and ``num_classes``, on ``device``.

    Channels-last: oneDNN's CPU convolutions and pooling run 1.5-2x faster in that layout.
    """
    check_net(net)
    model = NETS[net](image_shape, num_classes)
    return model.to(device).to(memory_format=torch.channels_last)


def check_fits(net: str, spec: DatasetSpec) -> None:
    """A StageError unless ``net`` can be built for ``spec``'s images; the random number
    generator is left as it was."""
    check_net(net)
    with torch.random.fork_rng(devices=[]):
        NETS[net](spec.image_shape, spec.num_classes)


@torch.inference_mode()
def predict_log_probs(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Log-probabilities for ``images`` (on the model's device), in large batches."""
    was_training = model.training
    model.eval()
    outputs = [model(images[start:start + batch_size])
               for start in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0, 0, device=images.device)


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


def save_model(path: Path, net: str, model: nn.Module, normalization: Normalization,
               dataset: DatasetSpec = MNIST) -> None:
    """Save the weights with what is needed to use them: the net's name, the normalization
    of its inputs and the dataset's image shape and class names, verified as checkpoints
    are."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch_save_verified(path, {"kind": MODEL_KIND, "net": net, "state_dict": state,
                               "mean": normalization.mean, "std": normalization.std,
                               "dataset": dataset.name,
                               "image_shape": list(dataset.image_shape),
                               "class_names": list(dataset.class_names)})


class SavedModel(NamedTuple):
    model: nn.Module
    net: str
    normalization: Normalization
    dataset: DatasetSpec  # the name, image shape and class names it was trained for


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
    dataset = saved_dataset(path, saved)
    try:
        model = NETS[saved["net"]](dataset.image_shape, dataset.num_classes)
        model = model.to(device).to(memory_format=torch.channels_last)
        model.load_state_dict(saved["state_dict"])
        normalization = Normalization(float(saved["mean"]), float(saved["std"]))
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise StageError(f"{path}: weights do not fit net '{saved['net']}': "
                         f"{str(err).splitlines()[0]}") from None
    return SavedModel(model.eval(), saved["net"], normalization, dataset)


def saved_dataset(path: Path, saved: dict) -> DatasetSpec:
    """The dataset a model file was trained for; a model saved before files recorded it was
    trained on MNIST."""
    if "image_shape" not in saved:
        return MNIST
    try:
        return spec_from_json({"name": saved.get("dataset"), "image_shape": saved["image_shape"],
                               "class_names": saved.get("class_names")})
    except (KeyError, TypeError, ValueError) as err:
        raise StageError(f"{path}: its dataset record is malformed ({err})") from None
