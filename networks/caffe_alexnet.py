"""The papers' AlexNet: Caffe's network (bvlc_alexnet, or CaffeNet) with its original ImageNet weights.

    model = build_caffe_alexnet(num_classes=31, weights="bvlc_reference_caffenet")   # or bvlc_alexnet, none
    new = new_layer(model)      # the freshly initialised fc8 (and bottleneck): it gets lr_mult x the learning rate

DAN, DDC and JAN started from CaffeNet (bvlc_reference_caffenet), DANN from bvlc_alexnet. Both differ from
torchvision's AlexNet: 96-256-384-384-256 channels, conv2/4/5 in two groups, local response normalisation after
conv1 and conv2 (bvlc_alexnet: ReLU, LRN, pool; CaffeNet: ReLU, pool, LRN), and inputs in BGR, 0-255, minus the
ImageNet mean, 227x227. The weights come from the Caffe model zoo as a .caffemodel, converted once (no Caffe
needed: caffemodel_blobs below reads its protobuf encoding) into a plain state_dict in the torch hub cache.
"""
import collections
import math
import os

import torch
from torch import nn

from common.files import write_file
from common.layers import new_head
from common.errors import UserError
from datasets.download import sha1_of

WEIGHTS = ("bvlc_reference_caffenet", "bvlc_alexnet", "none")
BLOCKS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")  # what --freeze counts, in order
URL = "http://dl.caffe.berkeleyvision.org/{}.caffemodel"
SHA1 = {"bvlc_alexnet": "9116a64c0fbe4459d18f4bb6b56d647b63920377",  # from the Caffe model zoo pages
        "bvlc_reference_caffenet": "4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46"}
CROP_SIZE = 227  # of the 256x256 resize (the input's mean subtraction: data_loader.caffe_pixels)
# Caffe layer name -> (our module's name, weight shape (out, in / groups, kh, kw) or (out, in), groups)
LAYERS = {"conv1": ("features.conv1", (96, 3, 11, 11)), "conv2": ("features.conv2", (256, 48, 5, 5)),
          "conv3": ("features.conv3", (384, 256, 3, 3)), "conv4": ("features.conv4", (384, 192, 3, 3)),
          "conv5": ("features.conv5", (256, 192, 3, 3)), "fc6": ("classifier.fc6", (4096, 9216)),
          "fc7": ("classifier.fc7", (4096, 4096))}


def caffe_features(lrn_before_pool):
    """conv1-conv5 as Caffe defines them; pools in ceil mode, as Caffe's pooling rounds up."""
    def block(n, conv):
        relu, pool = nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True)
        norm = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        order = [("relu", relu), ("norm", norm), ("pool", pool)] if lrn_before_pool else \
            [("relu", relu), ("pool", pool), ("norm", norm)]
        return [(f"conv{n}", conv)] + [(f"{name}{n}", layer) for name, layer in order]

    layers = block(1, nn.Conv2d(3, 96, 11, stride=4)) + block(2, nn.Conv2d(96, 256, 5, padding=2, groups=2))
    layers += [("conv3", nn.Conv2d(256, 384, 3, padding=1)), ("relu3", nn.ReLU()),
               ("conv4", nn.Conv2d(384, 384, 3, padding=1, groups=2)), ("relu4", nn.ReLU()),
               ("conv5", nn.Conv2d(384, 256, 3, padding=1, groups=2)), ("relu5", nn.ReLU()),
               ("pool5", nn.MaxPool2d(3, 2, ceil_mode=True))]
    return nn.Sequential(collections.OrderedDict(layers))


class CaffeAlexNet(nn.Module):
    def __init__(self, num_classes, lrn_before_pool, bottleneck=0):
        super().__init__()
        self.features = caffe_features(lrn_before_pool)
        self.classifier = nn.Sequential(collections.OrderedDict([
            ("fc6", nn.Linear(9216, 4096)), ("relu6", nn.ReLU()), ("drop6", nn.Dropout(0.5)),
            ("fc7", nn.Linear(4096, 4096)), ("relu7", nn.ReLU()), ("drop7", nn.Dropout(0.5)),
            ("fc8", new_head(4096, num_classes, bottleneck))]))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))  # fc6 reads C x H x W, as Caffe flattens


def build_caffe_alexnet(num_classes, weights="bvlc_reference_caffenet", bottleneck=0):
    model = CaffeAlexNet(num_classes, lrn_before_pool=weights != "bvlc_reference_caffenet", bottleneck=bottleneck)
    if weights != "none":
        model.load_state_dict(converted_weights(weights), strict=False)  # every key but fc8's: checked on loading
    return model


def new_layer(model):
    return model.classifier.fc8


def layers(model):
    """The layers adaptation reads, the last feeding the classifier: fc6, fc7 (after ReLU), the bottleneck."""
    found = {"fc6": model.classifier.relu6, "fc7": model.classifier.relu7}
    if not isinstance(new_layer(model), nn.Linear):
        found["bottleneck"] = new_layer(model)[2]
    return found


def blocks(model):
    """The modules of BLOCKS: conv1 ... conv5, fc6, fc7."""
    return [getattr(model.features, name) for name in BLOCKS[:5]] + [model.classifier.fc6, model.classifier.fc7]


# ---------------------------------------------------------------------------------------------------------
# Reading a .caffemodel: a protobuf NetParameter, read field by field from its wire format


def read_varint(data, position):
    """(value, position after it) of the varint at position."""
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise ValueError("a varint runs past the end")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def wire_fields(data):
    """(field number, value) for each field of one protobuf message (a memoryview, so that the 150 MB of fc6
    are never copied): an int for varints, a view of the bytes for length-delimited fields and of the raw 4 or
    8 bytes for fixed-width ones. Raises ValueError on a malformed message."""
    position = 0
    while position < len(data):
        key, position = read_varint(data, position)
        number, kind = key >> 3, key & 7
        if kind == 0:
            value, position = read_varint(data, position)
        elif kind in (1, 2, 5):
            if kind == 2:
                size, position = read_varint(data, position)
            else:
                size = 8 if kind == 1 else 4
            if size > len(data) - position:  # checked before anything of that size is made
                raise ValueError(f"field {number} claims {size} bytes where {len(data) - position} are left")
            value, position = data[position:position + size], position + size
        else:
            raise ValueError(f"wire type {kind} of field {number} is not one a caffemodel holds")
        if number == 0:
            raise ValueError("a field numbered 0")
        yield number, value


def expect_bytes(number, value):
    """value, if it is a length-delimited field (a message, string or packed array) as the schema says."""
    if isinstance(value, int):
        raise ValueError(f"field {number} holds a number where the schema has a message or a string")
    return value


def packed_varints(data):
    """The values of a packed repeated varint field (BlobShape's dims)."""
    values, position = [], 0
    while position < len(data):
        value, position = read_varint(data, position)
        values.append(value)
    return values


def read_blob(data):
    """A BlobProto as a tensor: its shape from `shape` (field 7, packed int64 dims) or from num, channels,
    height, width (fields 1-4, the older layout), its values from `data` (field 5, float32)."""
    legacy, dims, values, doubles = {}, None, [], False
    for number, value in wire_fields(data):
        if number in (1, 2, 3, 4):
            if not isinstance(value, int):
                raise ValueError(f"field {number} of a blob (a dimension) is not a number")
            legacy[number] = value
        elif number == 7:  # BlobShape: dim (field 1), packed or one varint each
            dims = []
            for field, dim in wire_fields(expect_bytes(number, value)):
                if field == 1:
                    dims += [dim] if isinstance(dim, int) else packed_varints(dim)
        elif number == 5:  # packed (bytes of many floats) or one float of 4 bytes: the same bytes either way
            values.append(expect_bytes(number, value))
        elif number == 8:
            doubles = True
    if doubles and not values:
        raise ValueError("a blob stores its values as double_data (float64), which this reader does not convert; "
                         "save the model with float data")
    if dims is None:
        dims = [legacy.get(n, 1) for n in (1, 2, 3, 4)]
    count = sum(len(v) for v in values)
    if count % 4:
        raise ValueError("a blob's float data is not a whole number of 4-byte floats")
    if math.prod(dims) != count // 4:  # compared before any tensor is made: dims may be absurd
        raise ValueError(f"a blob holds {count // 4} values for the shape {dims}")
    raw = bytearray().join(values)  # one copy, writable, as torch.frombuffer wants
    tensor = torch.frombuffer(raw, dtype=torch.float32) if raw else torch.empty(0)
    return tensor.reshape(dims)


def caffemodel_blobs(data):
    """{layer name: [blob tensors]} of a NetParameter: `layer` (field 100, LayerParameter: name 1, blobs 7) as
    Caffe writes since 2015, or the older `layers` (field 2, V1LayerParameter: name 4, blobs 6)."""
    found = {}
    for number, value in wire_fields(data):
        if number not in (100, 2) or isinstance(value, int):
            continue
        name_field, blob_field = (1, 7) if number == 100 else (4, 6)
        name, blobs = None, []
        for field, content in wire_fields(value):
            if field == name_field:
                name = bytes(expect_bytes(field, content)).decode("utf-8")
            elif field == blob_field:
                blobs.append(read_blob(expect_bytes(field, content)))
        if name is not None and blobs:
            found[name] = blobs
    return found


def caffe_state_dict(path):
    """Our module names -> tensors, from the caffemodel at path; a file that is not one, a missing layer or a
    blob of the wrong shape is a UserError naming the file and the layer."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        blobs = caffemodel_blobs(memoryview(data))
    except (ValueError, UnicodeDecodeError, IndexError) as e:
        raise UserError(f"'{path}' is not a Caffe model ({e}): a truncated download or a web page? Delete it "
                        "and run again, or place the right file there.") from None
    state = {}
    for layer, (module, shape) in LAYERS.items():
        if layer not in blobs or len(blobs[layer]) != 2:
            raise UserError(f"'{path}' has no layer '{layer}' with a weight and a bias (found layers: "
                            f"{', '.join(blobs) or 'none'}); it is not an AlexNet caffemodel.")
        weight, bias = (without_leading_ones(blob, dims) for blob, dims in zip(blobs[layer], (len(shape), 1)))
        if weight.shape != shape or bias.shape != (shape[0],):
            raise UserError(f"'{path}', layer '{layer}': a weight of shape {list(blobs[layer][0].shape)} and a bias "
                            f"of {list(blobs[layer][1].shape)}, where AlexNet has {list(shape)} and [{shape[0]}].")
        state[f"{module}.weight"], state[f"{module}.bias"] = weight, bias
    return state


def without_leading_ones(blob, dims):
    """Caffe's older files pad shapes to four dimensions with leading ones: fc6 as (1, 1, 4096, 9216), a bias as
    (1, 1, 1, 4096). Those ones are dropped down to `dims` dimensions; any other shape stays as it is."""
    while blob.dim() > dims and blob.shape[0] == 1:
        blob = blob[0]
    return blob


def expected_shapes():
    """{state_dict key: shape} of the converted weights: each layer's weight and bias."""
    return {f"{module}.{kind}": torch.Size(shape if kind == "weight" else shape[:1])
            for module, shape in LAYERS.values() for kind in ("weight", "bias")}


def check_converted(state, path):
    """The converted file holds exactly AlexNet's conv1-fc7 tensors in their shapes, or it is refused by name."""
    expected = expected_shapes()
    found = {key: tuple(value.shape) for key, value in state.items() if isinstance(value, torch.Tensor)} \
        if isinstance(state, dict) else {}
    wrong = [f"{key} {list(found[key]) if key in found else 'missing'} (expected {list(shape)})"
             for key, shape in expected.items() if found.get(key) != tuple(shape)]
    extra = sorted(set(found) - set(expected)) if isinstance(state, dict) else ["not a state_dict"]
    if wrong or extra or len(found) != len(state):
        raise UserError(f"'{path}' is not the converted AlexNet it should be ({'; '.join(wrong + extra)}). Delete it "
                        "and run again: it is converted anew from the caffemodel.")


def converted_weights(weights):
    """The state_dict of these weights from the hub cache: converted from the .caffemodel on first use
    (downloaded if it is not there yet; its SHA-1 checked), then loaded as a plain state_dict."""
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    converted = os.path.join(folder, f"caffe_{weights}.pth")
    if os.path.exists(converted):
        try:
            state = torch.load(converted, weights_only=True)
        except Exception as e:
            raise UserError(f"'{converted}' could not be read ({type(e).__name__}: {e}); delete it and run again "
                            "to convert the caffemodel anew.") from None
        check_converted(state, converted)
        return state
    caffemodel, url = os.path.join(folder, f"{weights}.caffemodel"), URL.format(weights)
    os.makedirs(folder, exist_ok=True)
    if not os.path.exists(caffemodel):
        try:
            torch.hub.download_url_to_file(url, caffemodel, progress=True)  # to a temporary name, then renamed
        except Exception as e:
            raise UserError(f"could not download the {weights} weights ({type(e).__name__}: {e}). Download {url} "
                            f"on a machine with internet and place it at {caffemodel}, or run with "
                            "--weights=none to train from random initialisation.") from None
    if sha1_of(caffemodel) != SHA1[weights]:
        raise UserError(f"'{caffemodel}' has SHA-1 {sha1_of(caffemodel)}, not the {SHA1[weights]} of {weights} "
                        f"from the Caffe model zoo: a damaged or different file. Delete it and run again.")
    state = caffe_state_dict(caffemodel)
    write_file(converted, lambda f: torch.save(state, f))  # whole, or not at all
    return state
