"""The papers' AlexNet: Caffe's network, its caffemodel read without Caffe, its input pipeline, and --freeze."""
import os

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from networks import caffe_alexnet
import data_loader
import office31
from conftest import make_tree
from data_loader import UserError, load_domain
from test_train import TINY

SHAPES = {name: shape for name, (_, shape) in caffe_alexnet.LAYERS.items()}


# ---------------------------------------------------------------------------------------------------------
# Writing caffemodels the way Caffe does: protobuf's wire format, by hand


def varint(n):
    out = b""
    while True:
        out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


def field(number, kind, payload):
    """One field: kind 0 (payload an int) or 2 (payload bytes, length-delimited)."""
    key = varint(number << 3 | kind)
    return key + (varint(payload) if kind == 0 else varint(len(payload)) + payload)


def blob(tensor, layout):
    data = field(5, 2, tensor.contiguous().numpy().astype("<f4").tobytes())  # packed floats
    if layout == "layer":  # BlobShape with packed dims
        return field(7, 2, field(1, 2, b"".join(varint(d) for d in tensor.shape))) + data
    dims = [1] * (4 - tensor.dim()) + list(tensor.shape)  # num, channels, height, width, as V1 files held fc blobs
    return b"".join(field(n, 0, d) for n, d in zip((1, 2, 3, 4), dims)) + data


def caffemodel(layers, layout):
    """A NetParameter: {name: [tensors]} as `layer` (field 100, string type) or the older `layers` (field 2)."""
    out = field(1, 2, b"CaffeNet")  # the net's name
    for name, tensors in layers.items():
        if layout == "layer":
            body = field(1, 2, name.encode()) + field(2, 2, b"Convolution")
            body += b"".join(field(7, 2, blob(t, layout)) for t in tensors)
            out += field(100, 2, body)
        else:
            body = field(4, 2, name.encode()) + field(5, 0, 4)  # V1 type enum
            body += b"".join(field(6, 2, blob(t, layout)) for t in tensors)
            out += field(2, 2, body)
    return out


@pytest.fixture(scope="module")
def caffe_blobs():
    """Random blobs of AlexNet's shapes, a data layer without blobs, relu layers and the 1000-class fc8."""
    g = torch.Generator().manual_seed(0)
    blobs = {"data": [], "relu1": []}
    for name, shape in SHAPES.items():
        blobs[name] = [torch.randn(shape, generator=g), torch.randn(shape[0], generator=g)]
    blobs["fc8"] = [torch.randn(1000, 4096, generator=g), torch.randn(1000, generator=g)]
    return blobs


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["layer", "layers"])
def test_a_caffemodel_in_each_layout_converts_to_exactly_its_tensors(tmp_path, caffe_blobs, layout):
    path = tmp_path / "net.caffemodel"
    path.write_bytes(caffemodel(caffe_blobs, layout))
    state = caffe_alexnet.caffe_state_dict(str(path))
    assert sorted(state) == sorted(f"{module}.{kind}" for module, _ in caffe_alexnet.LAYERS.values()
                                   for kind in ("weight", "bias"))
    assert state["features.conv2.weight"].shape == (256, 48, 5, 5)  # grouped: 96 / 2 input channels per group
    for name, (module, _) in caffe_alexnet.LAYERS.items():
        assert torch.equal(state[f"{module}.weight"], caffe_blobs[name][0]), name
        assert torch.equal(state[f"{module}.bias"], caffe_blobs[name][1]), name
    model = caffe_alexnet.CaffeAlexNet(31, lrn_before_pool=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert missing == ["classifier.fc8.weight", "classifier.fc8.bias"] and unexpected == []


def functional_alexnet(model, x, lrn_before_pool):
    """The network written out as plain functions, with the model's parameters."""
    f, c = model.features, model.classifier

    def norm_pool(x):
        lrn = lambda x: F.local_response_norm(x, 5, alpha=1e-4, beta=0.75, k=1.0)  # noqa: E731
        pool = lambda x: F.max_pool2d(x, 3, 2, ceil_mode=True)  # noqa: E731
        return pool(lrn(x)) if lrn_before_pool else lrn(pool(x))

    x = norm_pool(F.relu(F.conv2d(x, f.conv1.weight, f.conv1.bias, stride=4)))
    x = norm_pool(F.relu(F.conv2d(x, f.conv2.weight, f.conv2.bias, padding=2, groups=2)))
    x = F.relu(F.conv2d(x, f.conv3.weight, f.conv3.bias, padding=1))
    x = F.relu(F.conv2d(x, f.conv4.weight, f.conv4.bias, padding=1, groups=2))
    x = F.relu(F.conv2d(x, f.conv5.weight, f.conv5.bias, padding=1, groups=2))
    x = F.max_pool2d(x, 3, 2, ceil_mode=True).reshape(len(x), 256 * 6 * 6)  # C x H x W, as Caffe flattens
    x = F.relu(F.linear(x, c.fc6.weight, c.fc6.bias))
    x = F.relu(F.linear(x, c.fc7.weight, c.fc7.bias))
    return F.linear(x, c.fc8.weight, c.fc8.bias)


@pytest.mark.parametrize("weights, lrn_before_pool", [("bvlc_alexnet", True), ("bvlc_reference_caffenet", False)])
def test_network_equals_its_layers_written_out(weights, lrn_before_pool):
    torch.manual_seed(0)
    model = caffe_alexnet.CaffeAlexNet(7, lrn_before_pool)
    x = 50 * torch.randn(2, 3, 227, 227)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), functional_alexnet(model, x, lrn_before_pool), atol=1e-4, rtol=1e-4)
    names = [name for name, _ in model.features.named_children()]
    assert names[:4] == (["conv1", "relu1", "norm1", "pool1"] if lrn_before_pool else
                         ["conv1", "relu1", "pool1", "norm1"])


def test_caffe_inputs_are_bgr_0_255_minus_the_mean_227_crops():
    image = Image.new("RGB", (300, 280), (10, 20, 30))
    image.putpixel((0, 0), (255, 255, 255))  # outside the centre crop
    x = data_loader.test_transform(256, 227, "caffe")(image)
    expected = torch.tensor([30 - 104.0, 20 - 116.7, 10 - 122.7]).view(3, 1, 1).expand(3, 227, 227)
    assert x.shape == (3, 227, 227) and torch.allclose(x, expected)


def test_both_paths_give_the_same_caffe_tensors(tmp_path, monkeypatch):
    from torchvision import transforms
    root = make_tree(tmp_path / "d", {"amazon": 2}, size=(61, 37))
    cached, classic = (load_domain(root, "amazon", 45, cache, 0, "cpu") for cache in (True, False))
    (x1, y1), (x2, y2) = next(cached.test_batches(100, 33, "caffe")), next(classic.test_batches(100, 33, "caffe"))
    assert torch.equal(y1, y2) and torch.equal(x1, x2)
    monkeypatch.setattr(transforms.RandomCrop, "get_params", staticmethod(lambda image, size: (5, 2, 33, 33)))
    per_sample = data_loader.train_transform(45, 33, "caffe")
    per_sample.transforms[2].p = 1.0  # flipped
    path, _ = data_loader.datasets.ImageFolder(cached.root).samples[3]
    got = data_loader.normalize(data_loader.crop_batch(cached.images, torch.tensor([3]), torch.tensor([5]),
                                                       torch.tensor([2]), torch.tensor([True]), 33), "caffe")[0]
    assert torch.equal(got, per_sample(data_loader.load_rgb(path)))


def hub_checkpoints():
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    os.makedirs(folder, exist_ok=True)
    return folder


def test_converted_weights_load_offline_from_the_hub_cache(monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    torch.manual_seed(3)
    state = {k: v for k, v in caffe_alexnet.CaffeAlexNet(1000, False).state_dict().items() if "fc8" not in k}
    torch.save(state, os.path.join(hub_checkpoints(), "caffe_bvlc_reference_caffenet.pth"))
    model = caffe_alexnet.build_caffe_alexnet(31, "bvlc_reference_caffenet")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert model.classifier.fc8.weight.shape == (31, 4096)


@pytest.mark.slow
def test_first_use_converts_once_and_checks_the_sha1(tmp_path, monkeypatch, caffe_blobs):
    folder = hub_checkpoints()
    data = caffemodel(caffe_blobs, "layer")

    def fetch(url, path, progress=True):
        assert url == "http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel"
        with open(path, "wb") as f:
            f.write(data)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fetch)
    with pytest.raises(UserError, match="has SHA-1 .*not the 9116a64c0fbe4459d18f4bb6b56d647b63920377"):
        caffe_alexnet.converted_weights("bvlc_alexnet")  # a file that is not the model zoo's is refused
    assert not os.path.exists(os.path.join(folder, "caffe_bvlc_alexnet.pth"))
    fetched = os.path.join(folder, "bvlc_alexnet.caffemodel")
    monkeypatch.setitem(caffe_alexnet.SHA1, "bvlc_alexnet", caffe_alexnet.sha1_of(fetched))
    state = caffe_alexnet.converted_weights("bvlc_alexnet")
    assert torch.equal(state["classifier.fc6.weight"], caffe_blobs["fc6"][0])
    os.remove(os.path.join(folder, "bvlc_alexnet.caffemodel"))  # later runs read the converted file only
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    assert torch.equal(caffe_alexnet.converted_weights("bvlc_alexnet")["features.conv2.weight"],
                       caffe_blobs["conv2"][0])


def test_offline_says_where_to_place_the_file(tree, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(SystemExit) as stop:
        office31.main([f"--data_root={tree}", *TINY, "--model=caffe_alexnet", "--weights=auto", "--resize_size=256",
                       "--crop_size=227", f"--out_dir={tmp_path / 'out'}"])
    message = str(stop.value.code)
    assert "http://dl.caffe.berkeleyvision.org/bvlc_reference_caffenet.caffemodel" in message
    assert os.path.join(hub_checkpoints(), "bvlc_reference_caffenet.caffemodel") in message
    assert "--weights=none" in message


@pytest.mark.parametrize("content, phrase", [
    (b"\x13\x37" * 500, "is not a Caffe model"),
    ("html", "is not a Caffe model"),
    ("truncated", "is not a Caffe model"),
    ("without fc7", "has no layer 'fc7'"),
    ("wrong shape", "layer 'conv2': a weight of shape [256, 96, 5, 5]"),
])
@pytest.mark.slow
def test_a_bad_caffemodel_is_named_and_nothing_is_cached(tmp_path, monkeypatch, caffe_blobs, content, phrase):
    if content == "html":
        content = b"<!DOCTYPE html><html><body>Not Found</body></html>"
    elif content == "truncated":
        content = caffemodel(caffe_blobs, "layer")[:1_000_000]
    elif content == "without fc7":
        content = caffemodel({k: v for k, v in caffe_blobs.items() if k != "fc7"}, "layer")
    elif content == "wrong shape":
        content = caffemodel(dict(caffe_blobs, conv2=[torch.zeros(256, 96, 5, 5), torch.zeros(256)]), "layer")
    path = os.path.join(hub_checkpoints(), "bvlc_alexnet.caffemodel")
    with open(path, "wb") as f:
        f.write(content)
    monkeypatch.setitem(caffe_alexnet.SHA1, "bvlc_alexnet", caffe_alexnet.sha1_of(path))
    with pytest.raises(UserError) as error:
        caffe_alexnet.converted_weights("bvlc_alexnet")
    assert str(error.value).startswith(f"'{path}'") and phrase in str(error.value), str(error.value)
    assert sorted(os.listdir(hub_checkpoints())) == ["bvlc_alexnet.caffemodel"]


@pytest.mark.parametrize("case, phrase", [
    ("empty", "classifier.fc7.weight missing"),
    ("without fc7", "classifier.fc7.bias missing"),
    ("transposed fc6", "classifier.fc6.weight [9216, 4096] (expected [4096, 9216])"),
    ("not a dict", "not a state_dict"),
])
@pytest.mark.slow
def test_a_bad_converted_file_in_the_cache_is_refused_with_what_to_do(tmp_path, caffe_blobs, case, phrase):
    good = {f"{module}.{kind}": blob for name, (module, _) in caffe_alexnet.LAYERS.items()
            for kind, blob in zip(("weight", "bias"), caffe_blobs[name])}
    state = {"empty": {}, "without fc7": {k: v for k, v in good.items() if "fc7" not in k},
             "transposed fc6": dict(good, **{"classifier.fc6.weight": good["classifier.fc6.weight"].T.contiguous()}),
             "not a dict": [torch.zeros(1)]}[case]
    path = os.path.join(hub_checkpoints(), "caffe_bvlc_alexnet.pth")
    torch.save(state, path)
    with pytest.raises(UserError) as error:
        caffe_alexnet.build_caffe_alexnet(5, "bvlc_alexnet")
    assert str(error.value).startswith(f"'{path}' is not the converted AlexNet") and phrase in str(error.value)
    assert "Delete it and run again" in str(error.value)


def small_caffemodel():
    """A NetParameter of a few small blobs, to mutate byte by byte."""
    g = torch.Generator().manual_seed(1)
    return caffemodel({"conv1": [torch.randn(2, 3, 2, 2, generator=g), torch.randn(2, generator=g)],
                       "fc6": [torch.randn(3, 4, generator=g)]}, "layer")


def test_malformed_caffemodels_raise_only_the_readers_error():
    """Every truncation and many single-byte changes of a valid file, and the hand-made cases: a ValueError (which
    caffe_state_dict turns into one message), never TypeError, OverflowError, MemoryError or a huge allocation."""
    cases = [bytes.fromhex("a206090a05636f6e76313803"),  # a blob given as a number
             field(100, 2, field(1, 0, 5)),  # a layer name given as a number
             varint(100 << 3 | 2) + varint(2 ** 62) + b"conv1",  # a layer claiming 2^62 bytes
             field(100, 2, field(1, 2, b"fc6") + field(7, 2, field(1, 0, 2 ** 40) + field(5, 2, b"\0" * 8))),
             field(100, 2, field(1, 2, b"fc6") + field(7, 2, field(5, 0, 3)))]  # float data given as a number
    data = small_caffemodel()
    cases += [data[:k] for k in range(1, len(data))]
    g = torch.Generator().manual_seed(2)
    for position, value in zip(torch.randint(0, len(data), (300,), generator=g).tolist(),
                               torch.randint(0, 256, (300,), generator=g).tolist()):
        cases.append(data[:position] + bytes([value]) + data[position + 1:])
    for case in cases:
        try:
            caffe_alexnet.caffemodel_blobs(memoryview(case))
        except ValueError:
            pass


def test_blob_shapes_are_compared_by_dimension_and_double_data_is_named(tmp_path):
    """(The (1, 1, out, in) fc blobs of older files are accepted: the "layers" layout test above writes them.)"""
    path = tmp_path / "net.caffemodel"
    path.write_bytes(caffemodel({"conv1": [torch.zeros(3, 96, 11, 11), torch.zeros(96)]}, "layer"))
    with pytest.raises(UserError, match=r"layer 'conv1': a weight of shape \[3, 96, 11, 11\]"):
        caffe_alexnet.caffe_state_dict(str(path))
    doubles = field(100, 2, field(1, 2, b"conv1") + field(7, 2, field(7, 2, field(1, 2, varint(2))) +
                                                        field(8, 2, b"\0" * 16)))
    path.write_bytes(doubles)
    with pytest.raises(UserError, match="double_data"):
        caffe_alexnet.caffe_state_dict(str(path))


@pytest.mark.slow
def test_a_failed_save_of_the_converted_file_leaves_nothing(monkeypatch, caffe_blobs):
    path = os.path.join(hub_checkpoints(), "bvlc_alexnet.caffemodel")
    with open(path, "wb") as f:
        f.write(caffemodel(caffe_blobs, "layer"))
    monkeypatch.setitem(caffe_alexnet.SHA1, "bvlc_alexnet", caffe_alexnet.sha1_of(path))

    def disk_full(obj, f):
        f.write(b"part")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        caffe_alexnet.converted_weights("bvlc_alexnet")
    assert sorted(os.listdir(hub_checkpoints())) == ["bvlc_alexnet.caffemodel"]


@pytest.mark.parametrize("name, frozen, trained", [
    ("caffe_alexnet", ("features.conv1.", "features.conv2.", "features.conv3."), "features.conv4."),
    ("alexnet", ("features.0.", "features.3.", "features.6."), "features.8."),  # conv1-conv3; conv4
    ("resnet18", ("conv1.", "bn1.", "layer1.", "layer2."), "layer3."),  # the stem and two stages; the third
])
@pytest.mark.slow
def test_freeze_3_keeps_the_first_three_blocks_fixed(name, frozen, trained):
    torch.manual_seed(0)
    model, new_layer = office31.build_model(name, 5, "none", freeze=3)
    optimizer = office31.make_optimizer(model, new_layer(model), office31.FLAGS)
    in_groups = {id(p) for group in optimizer.param_groups for p in group["params"]}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    size = 227 if name == "caffe_alexnet" else 64
    x, y = torch.randn(4, 3, size, size), torch.tensor([0, 1, 2, 3])
    office31.train_one_epoch(model, optimizer, [(x, y)], 0, 1, False, torch.contiguous_format)
    parameters = dict(model.named_parameters())
    fixed = [n for n in parameters if n.startswith(frozen)]
    assert fixed and all(torch.equal(parameters[n], before[n]) and id(parameters[n]) not in in_groups for n in fixed)
    changed = [n for n in parameters if n.startswith(trained)]
    assert changed and all(not torch.equal(parameters[n], before[n]) and id(parameters[n]) in in_groups
                           for n in changed)
    assert len(in_groups) == len(parameters) - len(fixed)


def test_frozen_resnet_blocks_keep_their_batchnorm_statistics_too():
    torch.manual_seed(0)
    model, new_layer = office31.build_model("resnet18", 5, "none", freeze=2)  # the stem and layer1
    optimizer = office31.make_optimizer(model, new_layer(model), office31.FLAGS)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    batches = [(torch.randn(4, 3, 64, 64) + 3, torch.tensor([0, 1, 2, 3])) for _ in range(2)]
    office31.train_one_epoch(model, optimizer, batches, 0, 2, False, torch.contiguous_format)
    after = model.state_dict()
    frozen = [n for n in after if n.startswith(("conv1.", "bn1.", "layer1."))]
    assert any("running_var" in n for n in frozen) and any("num_batches_tracked" in n for n in frozen)
    assert [n for n in frozen if not torch.equal(after[n], before[n])] == []  # every tensor, buffers included
    assert not torch.equal(after["layer2.0.bn1.running_mean"], before["layer2.0.bn1.running_mean"])


@pytest.mark.parametrize("argv, phrase", [
    (["--model=caffe_alexnet", "--freeze=8"], "--freeze=8: caffe_alexnet has 7 blocks to freeze (conv1, conv2"),
    (["--model=resnet50", "--freeze=-1"], "--freeze=-1: resnet50 has 5 blocks to freeze (stem, layer1"),
    (["--model=caffe_alexnet", "--weights=IMAGENET1K_V1"], "caffe_alexnet has bvlc_reference_caffenet, bvlc_alexnet"),
])
def test_bad_caffe_flags(tmp_path, argv, phrase):
    with pytest.raises(SystemExit) as stop:
        office31.main([*argv, f"--out_dir={tmp_path / 'out'}"])
    assert str(stop.value.code).startswith("error: ") and phrase in str(stop.value.code)


@pytest.mark.slow
def test_caffe_alexnet_runs_end_to_end_with_its_own_crop(tree, tmp_path, capsys):
    args = [a for a in TINY if not a.startswith(("--resize_size", "--crop_size"))]
    [result] = office31.main([f"--data_root={tree}", *args, "--model=caffe_alexnet", "--weights=none",
                              "--resize_size=240", "--freeze=3", "--epochs=1", f"--out_dir={tmp_path}"])
    assert result["config"]["crop_size"] == 227 and result["total"] == 15
    assert capsys.readouterr().out.splitlines()[-1].startswith("A→W accuracy: ")
