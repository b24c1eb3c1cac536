"""``train-meta --pretrained``: torchvision/timm ResNet weights, and the recorded normalisation.

The pretrained files are written here, in torchvision's key layout, from our own encoder's
state dict (random values): nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from faults import file_sums, one_error
from test_train_support import FAST, make_store

from msn_cli.io.card import DEFAULT_NORMALIZE, IMAGENET_NORMALIZE, PretrainedRecord, parse_card
from msn_cli.io.checkpoints import CheckpointDir
from msn_cli.models.pretrained import encoder_of, load_pretrained, torchvision_name
from msn_cli.models.registry import build_backbone
from msn_cli.models.resnet import ResNet

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
TV18 = "resnet18-f37072fd.pth"


def torchvision_keys(depth: int) -> list[str]:
    """torchvision's ``resnet18/50().state_dict()`` keys, written out from its structure."""
    kind, blocks = {18: ("basic", (2, 2, 2, 2)), 50: ("bottleneck", (3, 4, 6, 3))}[depth]
    convs = 2 if kind == "basic" else 3
    keys = ["conv1.weight", *(f"bn1.{b}" for b in BN)]
    for s, n in enumerate(blocks, 1):
        for i in range(n):
            p = f"layer{s}.{i}"
            for k in range(1, convs + 1):
                keys += [f"{p}.conv{k}.weight", *(f"{p}.bn{k}.{b}" for b in BN)]
            if i == 0 and (s > 1 or kind == "bottleneck"):
                keys += [f"{p}.downsample.0.weight", *(f"{p}.downsample.1.{b}" for b in BN)]
    return [*keys, "fc.weight", "fc.bias"]


def tv_name(ours: str) -> str:
    """Our encoder's key in torchvision's layout (the test's own inverse mapping)."""
    key = ours.replace("stem.0.0.", "conv1.").replace("stem.0.1.", "bn1.")
    for k in "123":
        key = key.replace(f".conv{k}.0.", f".conv{k}.").replace(f".conv{k}.1.", f".bn{k}.")
    return key


def fake_torchvision18() -> dict[str, torch.Tensor]:
    """A ResNet-18 state dict in torchvision's layout: random values unlike He's, and fc."""
    g = torch.Generator().manual_seed(7)
    state = {}
    for key, v in ResNet(18).state_dict().items():
        name, leaf = tv_name(key), key.rsplit(".", 1)[1]
        if leaf == "num_batches_tracked":
            state[name] = torch.tensor(1234)
        elif v.ndim == 4:  # convolution
            state[name] = torch.randn(v.shape, generator=g) * 0.05
        elif leaf in ("weight", "running_var"):  # BatchNorm scale and variance: positive
            state[name] = torch.rand(v.shape, generator=g) + 0.5
        else:  # BatchNorm shift and mean
            state[name] = torch.randn(v.shape, generator=g) * 0.1
    state["fc.weight"] = torch.randn(1000, 512, generator=g)
    state["fc.bias"] = torch.zeros(1000)
    return state


@pytest.fixture(scope="module")
def tv18(tmp_path_factory):
    d = tmp_path_factory.mktemp("tv18")
    state = fake_torchvision18()
    torch.save(state, d / TV18)
    return d / TV18, state


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("pretrained-store"))


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def meta(store, ck, *extra):
    return ["train-meta", "--store", store, "--checkpoints", ck, *FAST, "--epochs", "1", *extra]


# -- the key mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize(("backbone", "depth"), [("bisenet", 18), ("pspnet", 50),
                                                 ("deeplabv3plus", 50)])  # fmt: skip
def test_encoder_keys_and_shapes_are_torchvisions(backbone, depth):
    with torch.device("meta"):  # shapes only: ResNet-50 is never allocated
        enc = encoder_of(build_backbone(backbone, 4), backbone)
    shapes = {torchvision_name(k): tuple(v.shape) for k, v in enc.state_dict().items()}
    expected = torchvision_keys(depth)
    assert len(expected) == {18: 122, 50: 320}[depth]  # torchvision's own counts, fc included
    assert sorted(shapes) == sorted(k for k in expected if not k.startswith("fc."))
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    if depth == 18:
        assert shapes["layer4.1.conv2.weight"] == (512, 512, 3, 3)
        assert shapes["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    else:
        assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
        assert shapes["layer4.2.conv3.weight"] == (2048, 512, 1, 1)
        assert shapes["layer3.0.downsample.1.running_mean"] == (1024,)


def test_torchvision_timm_and_wrapped_files_load_exactly(tv18, tmp_path):
    from safetensors.torch import save_file

    path, state = tv18
    no_counter = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    wrapped = tmp_path / "ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 9}, wrapped)
    timm = tmp_path / "model.safetensors"  # timm's names are torchvision's
    save_file({k: v.contiguous() for k, v in no_counter.items()}, timm)
    old = tmp_path / "old.pth"
    torch.save({"model": no_counter}, old)
    net = build_backbone("bisenet", 4)
    spatial = {k: v.clone() for k, v in net.spatial_path.state_dict().items()}
    enc = net.context_path.resnet
    for file in (path, wrapped, timm, old):
        for t in enc.state_dict().values():
            t.zero_()
        weights = load_pretrained(str(file), "bisenet", 4)
        weights.load_into(net)
        for key, value in enc.state_dict().items():
            theirs = state[tv_name(key)]
            if key.endswith("num_batches_tracked") and file in (timm, old):
                assert int(value) == 0, key  # absent from the file: kept (zeroed above)
            else:
                assert torch.equal(value, theirs), (file.name, key)
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        assert weights.record == PretrainedRecord(str(file), str(file), digest)
    assert all(torch.equal(v, spatial[k]) for k, v in net.spatial_path.state_dict().items())


# -- refusals, one line each --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("missing", "1 missing key(s) (layer3.1.bn2.running_var)"),
        ("unexpected", "1 unexpected key(s) (layer5.0.conv1.weight)"),
        ("shape", "layer2.0.conv1.weight is [128, 64, 1, 1] in the file, [128, 64, 3, 3] here"),
        ("resnet50", "looks like a ResNet-50"),
        ("not-tensors", "'epoch' is not a named tensor"),
        ("garbage", "not a loadable state dict"),
        ("absent", "no such file"),
    ],
)
def test_a_pretrained_file_that_does_not_fit_is_one_line(msn_invoke, store, tv18, tmp_path,
                                                         problem, expected):  # fmt: skip
    _, state = tv18
    bad = tmp_path / "bad.pth"
    edited = dict(state)
    if problem == "missing":
        del edited["layer3.1.bn2.running_var"]
    elif problem == "unexpected":
        edited["layer5.0.conv1.weight"] = torch.zeros(1)
    elif problem == "shape":
        edited["layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    elif problem == "resnet50":
        edited = {k: torch.zeros(1) for k in torchvision_keys(50)}
    elif problem == "not-tensors":
        edited = {"epoch": 3, **edited}
    if problem == "garbage":
        bad.write_bytes(b"not a torch file\n" * 10)
    elif problem != "absent":
        torch.save(edited, bad)
    ck = tmp_path / "ck"
    r = msn_invoke(*meta(store, ck, "--width", "1", "--pretrained", bad))
    assert r.exit_code == 1, r.output
    one_error(r.stderr, bad, expected)
    assert not ck.exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--backbone", "unet"], "unet has no ResNet encoder to load into; use bisenet, pspnet"),
        (["--width", "0.5"], "width 1.0 and 3 input channels, not width 0.5"),
    ],
)
def test_pretrained_on_a_model_it_cannot_fit_is_a_usage_error(msn_invoke, store, tmp_path,
                                                              args, expected):  # fmt: skip
    r = msn_invoke(*meta(store, tmp_path / "ck", *args, "--pretrained", "imagenet"))
    assert r.exit_code == 2, r.output
    one_error(r.stderr, "--pretrained", expected)
    assert not (tmp_path / "ck").exists()


def test_a_missing_imagenet_file_says_where_to_put_it(msn_invoke, store, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    r = msn_invoke(*meta(store, tmp_path / "ck", "--width", "1", "--pretrained", "imagenet"))
    assert r.exit_code == 1, r.output
    where = tmp_path / "th" / "hub" / "checkpoints" / TV18
    one_error(r.stderr, where, "never downloads", f"https://download.pytorch.org/models/{TV18}")
    assert not (tmp_path / "ck").exists() and not (tmp_path / "th").exists()


# -- end to end -----------------------------------------------------------------------------------


def test_imagenet_trains_records_resumes_and_refuses_a_change(
    msn_invoke, store, tv18, tmp_path, monkeypatch, keep_threads
):
    src, state = tv18
    hub = tmp_path / "th" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    shutil.copy(src, hub / TV18)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    ck = tmp_path / "ck"
    args = ("--width", "1", "--val-split", "none", "--lr", "1e-5")
    r = msn_invoke(*meta(store, ck, *args, "--pretrained", "imagenet"))
    assert r.exit_code == 0, r.output
    raw = json.loads((ck / "model.json").read_text())
    digest = hashlib.sha256((hub / TV18).read_bytes()).hexdigest()
    assert raw["pretrained"] == {"source": "imagenet", "file": str(hub / TV18), "sha256": digest}
    assert raw["normalize"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert CheckpointDir(ck).read_card().normalize == IMAGENET_NORMALIZE
    config = json.loads((ck / "meta" / "config.json").read_text())
    assert config["pretrained"] == "imagenet"
    trained = torch.load(ck / "meta" / "weights.pt", weights_only=True)
    prefix = "context_path.resnet."
    convs = [k for k in trained if k.startswith(prefix) and k.endswith(".0.weight")]
    assert len(convs) == 20
    for key in convs:  # 4 Adam steps at 1e-5 from the file's weights: within 1e-4 of them
        assert torch.allclose(trained[key], state[tv_name(key[len(prefix) :])], atol=1e-4), key

    (hub / TV18).unlink()  # a resumed run never reads the pretrained file again
    before = (ck / "model.json").read_bytes()
    r = msn_invoke(*meta(store, ck, *args, "--pretrained", "imagenet", "--epochs", "2"))
    assert r.exit_code == 0 and "1 epoch(s) trained" in r.stdout, r.output
    assert (ck / "model.json").read_bytes() == before
    sums = file_sums(ck)
    r = msn_invoke(*meta(store, ck, *args, "--epochs", "2"))
    assert r.exit_code == 1
    one_error(r.stderr, ck / "model.json", "pretrained='imagenet', not None", "--restart")
    r = msn_invoke(*meta(store, ck, *args, "--epochs", "2", "--pretrained", "imagenet",
                         "--restart"))  # fmt: skip
    assert r.exit_code == 1  # the file is gone: refused before anything is removed
    one_error(r.stderr, hub / TV18, "no such file")
    assert file_sums(ck) == sums


# -- model.json and the normalisation every stage uses --------------------------------------------


def _card(**top):
    model = {"backbone": "bisenet", "num_classes": 2, "patch_size": 64,
             "magnifications": [4, 2, 1]}  # fmt: skip
    return {"schema_version": 1, "model": model, "classes": ["a", "b"], **top}


SHA = "ab" * 32


@pytest.mark.parametrize(
    ("top", "problem"),
    [
        ({"normalize": {"mean": [0.5, 0.5], "std": [1, 1, 1]}}, "normalize.mean: expected a list"),
        ({"normalize": {"mean": [0.5] * 3, "std": [0.2, 0, 0.2]}}, "normalize.std: 0 is out of"),
        ({"normalize": {"mean": [0.5] * 3}}, "normalize.std: missing"),
        ({"normalize": {"mean": [0.5] * 3, "std": [1] * 3, "x": 1}}, "normalize: unknown key"),
        ({"normalize": "imagenet"}, "normalize: expected an object"),
        ({"pretrained": {"source": "imagenet", "file": "f"}}, "pretrained.sha256: missing"),
        ({"pretrained": {"source": "", "file": "f", "sha256": SHA}}, "pretrained.source: expected"),
        (
            {"pretrained": {"source": "s", "file": "f", "sha256": "XYZ"}},
            "pretrained.sha256: expected 64",
        ),
        ({"pretrained": "imagenet"}, "pretrained: expected an object or null"),
    ],
)
def test_card_normalize_and_pretrained_are_checked(top, problem):
    with pytest.raises(ValueError) as exc:
        parse_card(_card(**top))
    assert str(exc.value).startswith(problem), exc.value


def test_card_round_trip_and_older_cards(tmp_path):
    old = parse_card(_card())
    assert old.normalize == DEFAULT_NORMALIZE and old.pretrained is None
    record = {"source": "/w/r18.pth", "file": "/w/r18.pth", "sha256": SHA}
    norm = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    card = parse_card(_card(normalize=norm, pretrained=record))
    assert card.normalize == IMAGENET_NORMALIZE and card.pretrained == PretrainedRecord(**record)
    ck = CheckpointDir(tmp_path)
    ck.write_card(card)
    assert ck.read_card() == card
    assert json.loads(ck.model_json.read_text())["normalize"] == norm


def test_to_input_default_is_unchanged_and_imagenet_is_exact():
    from msn_cli.runtime import to_input

    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    cpu = torch.device("cpu")
    mean, std = (
        torch.tensor((0.5,) * 3).view(1, 3, 1, 1),
        torch.tensor((0.25,) * 3).view(1, 3, 1, 1),
    )
    was = (x.float().div_(255.0) - mean) / std  # to_input before the card recorded it
    assert torch.equal(to_input(x, cpu), was)
    assert torch.equal(to_input(x, cpu, normalize=DEFAULT_NORMALIZE), was)
    got = to_input(x, cpu, normalize=IMAGENET_NORMALIZE)
    for c, (m, s) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), strict=True)):
        assert torch.allclose(got[:, c].double(), (x[:, c].double() / 255 - m) / s, atol=1e-5)


def test_every_later_stage_normalises_as_model_json_says(store, tmp_path, monkeypatch,
                                                         keep_threads):  # fmt: skip
    """A meta-branch recorded as ImageNet-normalised: train-memrm (gap statistics, cache,
    steps, validation), train-fusion, evaluate and predict all normalise with it, and the
    card keeps it when the stages rewrite it."""
    from dataclasses import replace

    from fakes import random_checkpoints

    import msn_cli.runtime as runtime
    from msn_cli.evaluation.store import evaluate_store
    from msn_cli.prediction.config import PredictConfig
    from msn_cli.prediction.predictor import Predictor
    from msn_cli.stages.train_fusion import train_fusion
    from msn_cli.stages.train_memrm import train_memrm
    from msn_cli.training.config import FusionConfig, MemRMConfig

    ck, _ = random_checkpoints(tmp_path / "ck", stages=("meta",), patch_size=64,
                               magnifications=(4, 2, 1))  # fmt: skip
    ck.write_card(replace(ck.read_card(), normalize=IMAGENET_NORMALIZE))
    seen = []
    real = runtime.to_input

    def spy(x, device, channels_last=False, normalize=None):
        seen.append(normalize)
        return real(x, device, channels_last, normalize)

    modules = ["msn_cli.runtime", "msn_cli.training.loop", "msn_cli.training.gaps",
               "msn_cli.stages.train_memrm", "msn_cli.stages.train_fusion"]  # fmt: skip
    for name in modules:
        monkeypatch.setattr(f"{name}.to_input", spy)
    tiny = {"epochs": 1, "batch_size": 4, "workers": 0, "threads": 1, "device": "cpu"}
    train_memrm(MemRMConfig(store, str(ck.path), val_split="sub-train", **tiny))
    assert ck.read_card().normalize == IMAGENET_NORMALIZE
    train_fusion(FusionConfig(store, str(ck.path), val_split="sub-train", **tiny))
    assert ck.read_card().normalize == IMAGENET_NORMALIZE
    n_training = len(seen)
    evaluate_store(store, str(ck.path), device="cpu", batch_size=8)
    patches = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8).numpy()
    Predictor(PredictConfig(ck.path, device="cpu"))([patches] * 3, probabilities=False)
    assert n_training > 10 and len(seen) > n_training + 3
    assert all(n == IMAGENET_NORMALIZE for n in seen)


def test_experts_share_their_normalisation(store, tmp_path):
    from dataclasses import replace

    from fakes import random_checkpoints

    from msn_cli.errors import MsnError
    from msn_cli.io.store import PatchStore
    from msn_cli.training.experts import check_experts, write_experts

    record = PretrainedRecord("imagenet", "/hub/resnet18.pth", SHA)
    dirs = []
    for i in range(3):
        ck, _ = random_checkpoints(tmp_path / f"e{i}", stages=("meta",), seed=i, patch_size=64,
                                   magnifications=(4, 2, 1))  # fmt: skip
        ck.write_card(replace(ck.read_card(), normalize=IMAGENET_NORMALIZE, pretrained=record))
        dirs.append(str(ck.path))
    spec = PatchStore.open(store).spec
    other = CheckpointDir(dirs[2])
    other.write_card(replace(other.read_card(), normalize=DEFAULT_NORMALIZE, pretrained=None))
    with pytest.raises(MsnError, match="expert x3 normalises inputs with mean .0.5"):
        check_experts(CheckpointDir(tmp_path / "fused"), dirs, spec, store, False)
    other.write_card(replace(other.read_card(), normalize=IMAGENET_NORMALIZE, pretrained=record))
    fused = CheckpointDir(tmp_path / "fused")
    write_experts(fused, dirs, check_experts(fused, dirs, spec, store, False))
    card = fused.read_card()
    assert card.normalize == IMAGENET_NORMALIZE and card.pretrained == record
