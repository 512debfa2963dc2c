"""Integrity faults (issue #16, scope 2, 3 and 8): every file the library writes and reads back carries a sha256,
one flipped bit in any of them is refused naming the file, JSON / safetensors errors name the file, folders without
checksums load with a notice, and no loader unpickles.

The bit-flip sweep flips random single bits of each file type (``FLIPS`` per type, in place, restored after
each try) and loads through the public loader: every try must raise an error naming the flipped file; a load that
returns is a silent load and fails the test. ``bench/integrity_flips.py`` runs the same sweep with more flips.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import interp
from interp.io import (
    CorruptFileError, IntegrityError, MissingFileError, UncheckedWarning, read_json, read_safetensors,
    sha256_file, verify_checksums, write_checksums, write_json,
)

FLIPS = int(os.environ.get("INTERP_FLIPS", "100"))  # per file type (bench/integrity_flips.py: 300)


# ----------------------------------------------------------------------------------------------------------------
# the folders the library writes (small), each with its loader


def _model_folder(root: Path) -> Path:
    from interp.demo import tiny_model

    folder = root / "model"
    tiny_model().save_pretrained(str(folder))
    return folder


def _card_folder(root: Path) -> Path:
    folder = root / "embedded"
    shutil.copytree(interp.zoo.WEIGHTS_DIR / "tokfsm-mamba", folder)
    return folder


def _sae_folder(root: Path) -> Path:
    from interp.sae import SAEConfig, SparseAutoencoder

    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, hook_name="blocks.0.hook_resid_post"))
    return sae.save(root / "sae")


def _checkpoint_folder(root: Path) -> tuple[Path, Callable[[], object]]:
    from interp.training import load_checkpoint, save_checkpoint

    def parts():
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        return model, opt, sched

    model, opt, sched = parts()
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched.step()
    folder = save_checkpoint(root / "run" / "checkpoint", model, opt, sched, 1, {"lr": 1e-2}, {"losses": [0.5]})
    return folder, lambda: load_checkpoint(folder, *parts())


def _codebook_folder(root: Path) -> Path:
    from interp.codebook import CodebookConfig, CodebookLayer

    torch.manual_seed(0)
    return CodebookLayer(CodebookConfig(d=4, n_codes=8, k=2)).save(root / "codebook")


def _manifest_folder(root: Path) -> Path:
    from interp.activations.manifest import Manifest

    folder = root / "cache"
    folder.mkdir()
    Manifest(model={"name": "tiny"}, hooks={"blocks.0.hook_resid_post": {"d": 8, "shape": [8]}}, dtype="float32",
             stop_at_layer=None, shard_tokens=64, filters={}, limits={}, dataset={"name": "x"}).save(folder)
    return folder


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, tuple[Path, Callable[[], object]]]:
    return build_written(tmp_path_factory.mktemp("integrity"))


def build_written(root: Path) -> dict[str, tuple[Path, Callable[[], object]]]:
    """Write one of each file type under ``root``: file type -> (the file, a loader that reads it back through
    the library)."""
    from interp.activations.manifest import Manifest
    from interp.codebook import CodebookLayer
    from interp.hooks.tokenizer import DigitTokenizer
    from interp.sae import SparseAutoencoder
    from interp.sae.saelens import load_sae

    model, card, sae = _model_folder(root), _card_folder(root), _sae_folder(root)
    ckpt, resume = _checkpoint_folder(root)
    book, cache = _codebook_folder(root), _manifest_folder(root)
    tok = root / "tokenizer"
    DigitTokenizer().save_pretrained(tok)
    return {
        "model weights": (model / "model.safetensors", lambda: interp.load(str(model))),
        "model config": (model / "config.json", lambda: interp.load(str(model))),
        "model checksums": (model / "checksums.json", lambda: interp.load(str(model))),
        "tokenizer JSON (in a model folder)": (model / "digit_tokenizer.json", lambda: interp.load(str(model))),
        "tokenizer JSON": (tok / "digit_tokenizer.json", lambda: DigitTokenizer.from_pretrained(tok)),
        "embedded weights": (card / "model.safetensors", lambda: interp.load(str(card))),
        "model card": (card / "model_card.json", lambda: interp.load(str(card))),
        "SAE weights": (sae / "sae_weights.safetensors", lambda: SparseAutoencoder.load(sae)),
        "SAE config (load_sae)": (sae / "cfg.json", lambda: load_sae(sae)),
        "checkpoint weights": (ckpt / "model.safetensors", resume),
        "checkpoint optimizer": (ckpt / "optimizer.safetensors", resume),
        "checkpoint RNG state": (ckpt / "rng.safetensors", resume),
        "checkpoint state.json": (ckpt / "state.json", resume),
        "codebook tensors": (book / "codebook.safetensors", lambda: CodebookLayer.load(book)),
        "codebook JSON": (book / "codebook.json", lambda: CodebookLayer.load(book)),
        "activation manifest": (cache / "manifest.json", lambda: Manifest.load(cache)),
    }


def flip_sweep(path: Path, load: Callable[[], object], n: int, seed: int = 0) -> dict[str, int]:
    """Flip ``n`` random single bits of ``path`` (one at a time, restored after each); count the loads that
    raised naming the file and those that returned (silent)."""
    pristine = path.read_bytes()
    rng = random.Random(seed)
    out = {"refused": 0, "silent": 0, "unnamed": 0}
    unnamed = []
    try:
        for _ in range(n):
            i, bit = rng.randrange(len(pristine)), rng.randrange(8)
            damaged = bytearray(pristine)
            damaged[i] ^= 1 << bit
            path.write_bytes(bytes(damaged))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    load()
            except Exception as e:  # noqa: BLE001 - any error is a refusal; it must name the file
                if path.name in str(e):
                    out["refused"] += 1
                else:
                    out["unnamed"] += 1
                    unnamed.append(f"byte {i} bit {bit}: {type(e).__name__}: {str(e)[:200]}")
            else:
                out["silent"] += 1
    finally:
        path.write_bytes(pristine)
    out["examples"] = unnamed[:3]  # type: ignore[assignment]
    return out


def test_every_file_type_loads_pristine(written):
    for kind, (path, load) in written.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error", UncheckedWarning)  # all of them carry checksums
            load()


def test_bit_flip_sweep_refuses_every_flip_naming_the_file(written):
    failures = {}
    for k, (kind, (path, load)) in enumerate(written.items()):
        res = flip_sweep(path, load, FLIPS, seed=k)
        if res["silent"] or res["unnamed"]:
            failures[kind] = res
    assert not failures, failures
    for path, load in written.values():  # restored: every file loads again
        load()


def test_resume_from_a_flipped_checkpoint_is_refused_before_anything_is_restored(written):
    from interp.training import load_checkpoint

    path, _ = written["checkpoint optimizer"]
    pristine = path.read_bytes()
    damaged = bytearray(pristine)
    damaged[len(damaged) // 2] ^= 0x10  # a mantissa bit of a moment estimate: the file still parses
    path.write_bytes(bytes(damaged))
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 3)
    before = model.weight.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    try:
        with pytest.raises(IntegrityError, match=r"optimizer\.safetensors.*checksum mismatch.*resume=False"):
            load_checkpoint(path.parent, model, opt, sched)
        assert torch.equal(model.weight, before)  # nothing was restored
    finally:
        path.write_bytes(pristine)


def test_sae_training_checkpoint_read_is_verified(tmp_path):
    from interp.sae.train import load_checkpoint_sae
    from interp.training import save_checkpoint

    from interp.sae import SAEConfig, SparseAutoencoder

    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, hook_name="blocks.0.hook_resid_post"))
    holder = torch.nn.Module()
    holder.sae = sae
    opt = torch.optim.Adam(holder.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    folder = save_checkpoint(tmp_path / "checkpoint", holder, opt, sched, 0, {}, {"sae_config": sae.cfg.to_dict()})
    load_checkpoint_sae(folder)
    w = folder / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-3] ^= 1
    w.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="model.safetensors"):
        load_checkpoint_sae(folder)


# ----------------------------------------------------------------------------------------------------------------
# the reader: errors name the file and say what to do


def test_read_json_errors_name_the_file(tmp_path):
    f = tmp_path / "state.json"
    with pytest.raises(MissingFileError, match="state.json.*missing"):
        read_json(f, what="checkpoint state")
    f.write_bytes(b"")
    with pytest.raises(CorruptFileError, match=r"state.json.*empty.*Re-run"):
        read_json(f)
    f.write_bytes(b'{"a": "\xff\xfe"}')
    with pytest.raises(CorruptFileError, match="state.json.*not UTF-8"):
        read_json(f)
    f.write_bytes(b'{"a": 1,}')
    with pytest.raises(CorruptFileError, match=r"state.json.*not valid JSON \(line 1"):
        read_json(f)
    assert isinstance(CorruptFileError("x"), ValueError) and isinstance(MissingFileError("x"), FileNotFoundError)


def test_read_safetensors_errors_name_the_file(tmp_path):
    from safetensors.torch import save_file

    f = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(4)}, str(f))
    assert torch.equal(read_safetensors(f)["a"], torch.ones(4))
    f.write_bytes(f.read_bytes()[:20])
    with pytest.raises(CorruptFileError, match=r"w.safetensors.*not a readable safetensors"):
        read_safetensors(f, what="weights")


def test_self_checksummed_json_refuses_any_edit(tmp_path):
    f = write_json(tmp_path / "card.json", {"metric": 0.97, "name": "x"}, checksums=())
    assert read_json(f)["metric"] == 0.97
    f.write_text(f.read_text().replace("0.97", "0.99"))  # an edited card (it used to change an evaluation)
    with pytest.raises(IntegrityError, match="card.json.*changed since it was written"):
        read_json(f)
    f = write_json(tmp_path / "card.json", {"metric": 0.97}, checksums=())
    f.write_text(f.read_text().replace('"checksums"', '"checksumz"'))  # the record's key itself
    with pytest.raises(IntegrityError, match="card.json"):
        read_json(f)


def test_checksum_mismatch_message_and_cli_line(tmp_path):
    from interp import cli

    (tmp_path / "a.bin").write_bytes(b"hello")
    write_checksums(tmp_path, ["a.bin"])
    assert verify_checksums(tmp_path, ["a.bin"])
    expected = sha256_file(tmp_path / "a.bin")
    (tmp_path / "a.bin").write_bytes(b"hellp")
    with pytest.raises(IntegrityError) as info:
        verify_checksums(tmp_path, ["a.bin"])
    msg = str(info.value)
    assert "a.bin" in msg and expected[:12] in msg and sha256_file(tmp_path / "a.bin")[:12] in msg
    assert "--overwrite" in msg
    assert cli.is_user_error(info.value) and "\n" not in cli.error_line(info.value)
    (tmp_path / "b.bin").write_bytes(b"new")
    (tmp_path / "a.bin").write_bytes(b"hello")
    with pytest.raises(IntegrityError, match="b.bin.*not covered"):
        verify_checksums(tmp_path, ["a.bin", "b.bin"])


# ----------------------------------------------------------------------------------------------------------------
# someone else's folder: loads, with the check skipped and said


def test_folder_without_checksums_loads_with_a_notice(tmp_path):
    from interp.demo import tiny_model
    from interp.sae import SAEConfig, SparseAutoencoder

    model = tiny_model()
    model.save_pretrained(str(tmp_path / "m"))
    (tmp_path / "m" / "checksums.json").unlink()
    with pytest.warns(UncheckedWarning, match="no checksums.*without an integrity check"):
        loaded = interp.load(str(tmp_path / "m"))
    tokens = torch.tensor([[1, 2, 3]])
    assert torch.equal(loaded(tokens), model(tokens))
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, hook_name="blocks.0.hook_resid_post"))
    sae.save(tmp_path / "s")
    (tmp_path / "s" / "checksums.json").unlink()
    with pytest.warns(UncheckedWarning, match="SAE folder"):
        SparseAutoencoder.load(tmp_path / "s")


def test_required_checksums_refuse_a_folder_without_them(tmp_path):
    with pytest.raises(IntegrityError, match="no checksum record"):
        verify_checksums(tmp_path, required=True)


# ----------------------------------------------------------------------------------------------------------------
# the embedded models ship their checksums


def test_shipped_checksums_match():
    interp.zoo.verify_shipped_checksums()  # every folder under interp/zoo/weights has a record, all files match
    folders = [p for p in interp.zoo.WEIGHTS_DIR.iterdir() if p.is_dir()]
    assert len(folders) >= 7
    for name in interp.zoo.list_models():
        with warnings.catch_warnings():
            warnings.simplefilter("error", UncheckedWarning)
            interp.load(name)
        card = interp.zoo.model_card(name)
        assert "checksums" not in card and "metrics" in card


def test_embedded_flip_is_refused_naming_the_file(tmp_path):
    folder = _card_folder(tmp_path)
    w = folder / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0x01  # a low mantissa bit: logits 1e-3 off, it used to load silently
    w.write_bytes(bytes(data))
    from interp.hooks.loading import CheckpointError

    with pytest.raises(CheckpointError, match=r"model.safetensors.*checksum mismatch"):
        interp.load(str(folder))
    with pytest.raises(IntegrityError):
        interp.load(str(folder))


# ----------------------------------------------------------------------------------------------------------------
# no pickle


def test_bin_only_folder_is_refused_with_the_conversion_hint(tmp_path):
    from interp.demo import tiny_model
    from interp.hooks.loading import CheckpointError

    folder = tmp_path / "m"
    tiny_model().save_pretrained(str(folder))
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"never": "unpickled"}))
    with pytest.raises(CheckpointError) as info:
        interp.load(str(folder))
    msg = str(info.value)
    assert "safetensors only" in msg and "safe_serialization=True" in msg and "weights_only" not in msg


class _Marker:
    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_transformerlens_name_never_unpickles_a_bin_checkpoint(tmp_path, monkeypatch):
    """``interp.load("gpt2")`` with a hub cache holding ``pytorch_model.bin`` only (offline): refused with the
    safetensors hint, without unpickling (transformers is asked for safetensors only)."""
    import transformers

    from interp.hooks.loading import CheckpointError

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    repo = tmp_path / "hub" / "models--gpt2"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32, n_ctx=32,
                            architectures=["GPT2LMHeadModel"]).save_pretrained(snap)
    marker = tmp_path / "UNPICKLED"
    evil = _Marker()
    evil.path = str(marker)
    (snap / "pytorch_model.bin").write_bytes(pickle.dumps(evil))
    with pytest.raises(CheckpointError) as info:
        interp.load("gpt2")
    msg = str(info.value)
    assert "safetensors" in msg and "safe_serialization=True" in msg and "weights_only" not in msg, msg
    chain, e = [], info.value
    while e is not None:
        chain.append(type(e).__name__)
        e = e.__cause__ or e.__context__
    assert "UnpicklingError" not in chain, chain  # torch.load was never reached
    assert not marker.exists()


def test_pickle_only_transformerlens_models_are_refused_before_any_download():
    from interp.hooks.loading import CheckpointError

    with pytest.raises(CheckpointError, match=r"pickle \(\.pth\) only.*safe_serialization=True"):
        interp.load("solu-1l")


def test_no_loader_calls_torch_load_or_pickle():
    root = Path(interp.__file__).resolve().parent.parent
    offenders = []
    for folder in ("interp", "hooks", "apps"):
        for p in (root / folder).rglob("*.py"):
            text = p.read_text()
            for bad in ("torch.load(", "pickle.load", "weights_only=False", "allow_pickle=True"):
                if bad in text:
                    offenders.append(f"{p.relative_to(root)}: {bad}")
    assert not offenders, offenders


def test_every_json_and_safetensors_read_goes_through_the_helper():
    root = Path(interp.__file__).resolve().parent.parent
    offenders = []
    for folder in ("interp", "hooks", "apps"):
        for p in (root / folder).rglob("*.py"):
            if p.name == "io.py" and p.parent.name == "interp":
                continue
            for n, line in enumerate(p.read_text().splitlines(), 1):
                code = line.split("#")[0]
                if ("load_file(" in code or "safe_open(" in code
                        or ("json.load" in code and ".read_text()" in code)):
                    offenders.append(f"{p.relative_to(root)}:{n}")
    assert not offenders, offenders
