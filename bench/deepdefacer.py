"""deepdefacer (Khazane et al., Stanford, MIT licence; ``pip install --no-deps deepdefacer``), run by PyTorch.

deepdefacer is a 3D U-Net (Keras 2.2, channels first) that predicts which voxels to keep. Its
package holds the network's configuration and weights (``model.hdf5``); its code needs Keras 2 and
a GPU-era TensorFlow that no longer install. So this reads the file with h5py and runs the layers it
lists with PyTorch, and repeats its steps around the network: the voxel array rescaled to 160³
(the centres of the first and last voxels kept), scaled to [0, 1], the network's output cut at
0.5, rescaled back by linear interpolation, and the scan multiplied by it. deepdefacer reads the
array in the file's voxel order; the bench gives it the head in RAS+ order, in which its mask
falls on the lower face (in IXI's stored PSR order it also takes the forehead of IXI012).

Checked against Keras itself (TensorFlow's CPU kernels run 3D convolutions channels-last only, so
the same layers and weights are rebuilt channels-last)::

    pip install tensorflow-cpu h5py torch nibabel scipy   # any environment with Keras 3
    python bench/deepdefacer.py HEAD.nii.gz

prints the largest difference between the two networks' outputs and how many voxels fall on
different sides of 0.5.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from functools import lru_cache
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

#: The grid deepdefacer's network sees: every scan's voxel array rescaled to this shape.
NETWORK_SHAPE = (160, 160, 160)
ACTIVATIONS = {"relu": torch.relu, "sigmoid": torch.sigmoid, "linear": lambda tensor: tensor}


def model_file() -> Path:
    try:
        return Path(importlib.metadata.distribution("deepdefacer").locate_file("deepdefacer/model.hdf5"))
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit("deepdefacer is not installed: pip install --no-deps deepdefacer (or make install)") from None


@lru_cache(maxsize=1)
def network() -> tuple[list[dict], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The Keras model's layers (its saved configuration) and each convolution's (kernel, bias)."""
    with h5py.File(model_file(), "r") as saved:
        layers = json.loads(saved.attrs["model_config"])["config"]["layers"]
        group = saved["model_weights"]
        weights = {layer["name"]: tuple(torch.from_numpy(np.asarray(group[layer["name"]][layer["name"]][part]))
                                        for part in ("kernel:0", "bias:0"))
                   for layer in layers if layer["class_name"] == "Conv3D"}
    return layers, weights


def _inputs(layer: dict, outputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return [outputs[node[0]] for node in layer["inbound_nodes"][0]]


@torch.no_grad()
def keep_probability(volume: np.ndarray) -> np.ndarray:
    """The network's output on a (160, 160, 160) volume scaled to [0, 1]: p(keep) per voxel."""
    layers, weights = network()
    outputs: dict[str, torch.Tensor] = {}
    for layer in layers:
        kind, config, name = layer["class_name"], layer["config"], layer["name"]
        if kind == "InputLayer":
            outputs[name] = torch.from_numpy(np.ascontiguousarray(volume, np.float32))[None, None]
            continue
        inputs = _inputs(layer, outputs)
        first = inputs[0]
        if kind == "Conv3D":
            kernel, bias = weights[name]
            padding = []  # Keras "same": the odd voxel of an even kernel's padding goes after
            for size in reversed(config["kernel_size"]):
                total = size - 1 if config["padding"] == "same" else 0
                padding += [total // 2, total - total // 2]
            convolved = F.conv3d(F.pad(first, padding), kernel.permute(4, 3, 0, 1, 2), bias)
            outputs[name] = ACTIVATIONS[config["activation"]](convolved)
        elif kind == "MaxPooling3D":
            outputs[name] = F.max_pool3d(first, config["pool_size"], config["strides"])
        elif kind == "UpSampling3D":
            outputs[name] = F.interpolate(first, scale_factor=tuple(config["size"]), mode="nearest")
        elif kind == "Concatenate":
            outputs[name] = torch.cat(inputs, dim=config["axis"])
        elif kind == "Dropout":
            outputs[name] = first
        else:
            raise ValueError(f"deepdefacer's model has a {kind} layer this port does not run")
    return outputs[layers[-1]["name"]][0, 0].numpy()


def rescaled(volume: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``volume`` resampled linearly onto ``shape`` voxels, centre on centre, the spacing stretched
    so that the first and last voxels' centres span the same length (deepdefacer's resampling)."""
    source, target = np.array(volume.shape, float), np.array(shape, float)
    axes = [source[d] / 2 + (np.arange(shape[d]) - target[d] / 2) * (source[d] - 1) / (target[d] - 1) for d in range(3)]
    return ndimage.map_coordinates(volume, np.meshgrid(*axes, indexing="ij"), order=1, mode="constant", cval=0.0)


def network_input(data: np.ndarray) -> np.ndarray:
    volume = rescaled(np.asarray(data, np.float32), NETWORK_SHAPE)
    return (volume - volume.min()) / (volume.max() - volume.min() + 1e-7)


def deepdefacer_defaced(data: np.ndarray) -> np.ndarray:
    """deepdefacer's output for a voxel array (X, Y, Z) as its tool would read it from a file."""
    keep = (keep_probability(network_input(data)) >= 0.5).astype(np.float32)
    return (data * rescaled(keep, data.shape)).astype(np.float32)


def keras_keep_probability(volume: np.ndarray) -> np.ndarray:
    """The same network built by Keras (channels last) from the same file: the port's reference."""
    import keras

    layers, weights = network()
    outputs = {}
    for layer in layers:
        kind, config, name = layer["class_name"], layer["config"], layer["name"]
        if kind == "InputLayer":
            outputs[name] = entry = keras.Input((None, None, None, 1))
            continue
        inputs = _inputs(layer, outputs)
        if kind == "Conv3D":
            convolution = keras.layers.Conv3D(config["filters"], config["kernel_size"], padding=config["padding"],
                                              activation=config["activation"])
            outputs[name] = convolution(inputs[0])
            convolution.set_weights([tensor.numpy() for tensor in weights[name]])
        elif kind == "MaxPooling3D":
            outputs[name] = keras.layers.MaxPooling3D(config["pool_size"], config["strides"])(inputs[0])
        elif kind == "UpSampling3D":
            outputs[name] = keras.layers.UpSampling3D(config["size"])(inputs[0])
        elif kind == "Concatenate":
            outputs[name] = keras.layers.Concatenate(axis=-1)(inputs)
        else:  # Dropout (the port has refused any other layer before this runs)
            outputs[name] = inputs[0]
    model = keras.Model(entry, outputs[layers[-1]["name"]])
    return model.predict(volume[None, ..., None], verbose=0)[0, ..., 0]


if __name__ == "__main__":
    import nibabel as nib

    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    volume = network_input(np.asanyarray(nib.as_closest_canonical(nib.load(sys.argv[1])).dataobj))
    ported, reference = keep_probability(volume), keras_keep_probability(volume)
    print(f"{sys.argv[1]}: largest |p(port) - p(Keras)| {np.abs(ported - reference).max():.2e}, "
          f"voxels on different sides of 0.5: {int(((ported >= 0.5) != (reference >= 0.5)).sum())} of {volume.size}")
