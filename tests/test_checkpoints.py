"""The checkpoint-directory contract: layout, refusals, safe loading, model rebuild."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from fakes import random_checkpoints

from msn_cli.errors import MsnError
from msn_cli.io.checkpoints import (
    MSN_STAGES,
    CheckpointDir,
    load_checkpoint_file,
)
from msn_cli.io.store import StoreSpec
from msn_cli.models.msn import MSN, MSNConfig

CLASSES = ["normal", "benign", "in situ", "invasive"]


def make_dir(path, stages=MSN_STAGES, fusion="meta"):
    return random_checkpoints(path, stages, classes=CLASSES, fusion=fusion)


def test_rebuild_the_model_from_the_directory_alone(tmp_path):
    ck, model = make_dir(tmp_path / "ck")
    loaded, stages = ck.load_model("cpu")
    assert stages == MSN_STAGES and not loaded.training
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        a, b = model(x, x, x), loaded(x, x, x)  # fusion from the stored σ*: no labels
    assert torch.equal(a.s, b.s) and torch.equal(a.s1, b.s1)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        *sorted(MSN_STAGES),
        "model.json",
    ]
    assert not list((tmp_path / "ck").rglob(".*tmp*"))  # atomic writes leave no temporaries


def test_partial_directories_load_what_is_finished_and_refuse_the_rest(tmp_path):
    ck, _ = make_dir(tmp_path / "ck", stages=("meta",))
    assert ck.completed() == ("meta",)
    assert ck.load_model("cpu")[1] == ("meta",)
    with pytest.raises(MsnError, match=r"stage 'memrm' has not finished; run `msn train-memrm`"):
        ck.require("meta", "memrm")
    with pytest.raises(MsnError, match="no model.json here; run `msn train-meta` first"):
        CheckpointDir(tmp_path / "empty").require("meta")


def test_store_mismatch_is_refused_with_the_reason(tmp_path):
    ck, _ = make_dir(tmp_path / "ck", stages=("meta",))
    ck.check_store(StoreSpec(32, (16.0, 4.0, 1.0), tuple(CLASSES)))
    with pytest.raises(MsnError, match="model has classes normal,benign,in situ,invasive"):
        ck.check_store(StoreSpec(32, (16.0, 4.0, 1.0), ("normal", "lesion")))
    with pytest.raises(MsnError, match="model has patch_size 32, not 64"):
        ck.check_store(StoreSpec(64, (16.0, 4.0, 1.0), tuple(CLASSES)))


def test_weights_from_another_architecture_are_refused(tmp_path):
    ck, _ = make_dir(tmp_path / "ck", stages=("meta",))
    other = MSN(MSNConfig(backbone="unet", width=0.125, num_classes=4, patch_size=32))
    ck.stage("meta").save_weights(other.meta_branch.state_dict())
    with pytest.raises(MsnError, match="weights do not fit model.json"):
        ck.load_model("cpu", weights="last")  # weights.pt (best.pt is still the right one)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_malicious_pickle_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "weights.pt"
    bad.write_bytes(pickle.dumps({"state": _Payload()}))
    with pytest.raises(MsnError, match="not a loadable msn checkpoint"):
        load_checkpoint_file(bad)
    zipped = tmp_path / "zipped.pt"
    torch.save({"state": _Payload()}, zipped)  # torch's own format, same payload
    with pytest.raises(MsnError, match="not a loadable msn checkpoint"):
        load_checkpoint_file(zipped)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04broken"])
def test_files_that_are_not_checkpoints(tmp_path, content):
    path = tmp_path / "last.pt"
    path.write_bytes(content)
    with pytest.raises(MsnError) as err:
        load_checkpoint_file(path)
    assert str(err.value).startswith(f"{path}: not a loadable msn checkpoint")
    assert "\n" not in str(err.value)


def test_corrupt_or_foreign_model_json(tmp_path):
    ck = CheckpointDir(tmp_path)
    ck.model_json.write_text("{not json")
    with pytest.raises(MsnError, match="unreadable JSON"):
        ck.read_card()
    ck.model_json.write_text('{"hello": 1}')
    with pytest.raises(MsnError, match="not a valid msn model.json: schema_version"):
        ck.read_card()
    ck.model_json.write_text('{"model": {}, "classes": [], "schema_version": 99}')
    with pytest.raises(MsnError, match="schema version 99"):
        ck.read_card()


def test_stage_files_round_trip(tmp_path):
    st = CheckpointDir(tmp_path).stage("memrm")
    state = {"epoch": torch.tensor(3), "rng": torch.get_rng_state()}
    st.save_last(state)
    assert torch.equal(st.load_last()["rng"], state["rng"])
    st.write_history([{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}])
    assert [r["loss"] for r in st.read_history()] == [0.5, 0.25]
    st.write_config({"epochs": 10})
    assert st.read_config() == {"epochs": 10}
    st.reset()
    assert st.load_last() is None and st.read_history() == [] and not st.complete


@pytest.mark.parametrize("raised", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_a_checkpoint_write_cut_short_raises_what_cut_it(tmp_path, monkeypatch, raised):
    """torch.save turns what its file's write raised into a RuntimeError; a Ctrl-C landing
    there must stay an interrupt (exit 130), a full disk an OSError, and no file appears."""
    from msn_cli.io import atomic

    class CutShort:  # the file handle: its third write is where the signal or ENOSPC lands
        def __init__(self, fh):
            self.fh, self.writes = fh, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                raise raised
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(atomic, "open", lambda *a: CutShort(open(*a)), raising=False)  # noqa: SIM115
    path = tmp_path / "last.pt"
    with pytest.raises(type(raised)):
        atomic.atomic_write(path, lambda fh: torch.save({"w": torch.zeros(4096)}, fh))
    assert not list(tmp_path.iterdir())  # neither the checkpoint nor its temporary
