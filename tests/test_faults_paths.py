"""Issue #16, scope 7: the app reads nothing outside the roots the user chose. Every path the app opens goes through
:func:`interp.loading.inside_roots` (resolved with ``os.path.realpath``, roots resolved too; ``contents=True``:
every file under a folder and every path its JSON files name). Escapes are refused with one message that names only
what the user typed, worded the same whether or not the outside path exists."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from interp.codebook.train import check_codebook_folder
from interp.codebook.zoo import codebook_folder, open_codebook_model
from interp.demo import tiny_model
from interp.loading import OUTSIDE, find_folders, inside_roots, resolve_model_spec
from interp.sae import SAEConfig, SparseAutoencoder
from interp.sae.model import find_sae_folders, open_sae

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture
def tree(tmp_path, model):
    """runs/ (the root) with a model folder and an SAE folder; secret/ outside it with a weights file, a config."""
    root, secret = tmp_path / "runs", tmp_path / "secret"
    root.mkdir()
    secret.mkdir()
    model.save_pretrained(str(root / "model"))
    torch.manual_seed(0)
    SparseAutoencoder(SAEConfig(d_in=model.cfg.d_model, d_sae=16, hook_name=HOOK)).save(root / "sae")
    for name in ("model.safetensors", "config.json", "sae_weights.safetensors", "cfg.json", "codebook.safetensors"):
        (secret / name).write_bytes(b"{}")
    return root, secret


def outside_message(exc: pytest.ExceptionInfo, typed: str) -> str:
    msg = str(exc.value)
    assert OUTSIDE in msg and msg.startswith(typed)
    return msg


def relink(folder: Path, name: str, target: Path) -> None:
    (folder / name).unlink()
    (folder / name).symlink_to(target)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_symlinked_model_file_refused(tree, name):
    root, secret = tree
    relink(root / "model", name, secret / name)
    typed = str(root / "model")
    with pytest.raises(ValueError, match=OUTSIDE) as e:
        resolve_model_spec(typed, [root])
    outside_message(e, typed)
    assert str(secret) not in str(e.value)  # the link's target is never shown


@pytest.mark.parametrize("name", ["sae_weights.safetensors", "cfg.json"])
def test_symlinked_sae_file_refused(tree, model, name):
    root, secret = tree
    relink(root / "sae", name, secret / name)
    with pytest.raises(ValueError, match=OUTSIDE):
        open_sae(root / "sae", [root], model)


def test_folder_of_symlinks_refused(tree, model):
    root, secret = tree
    shutil.copytree(root / "sae", secret / "sae")
    (root / "links").mkdir()
    for f in (secret / "sae").iterdir():
        (root / "links" / f.name).symlink_to(f)
    with pytest.raises(ValueError, match=OUTSIDE):
        open_sae(root / "links", [root], model)
    assert open_sae(secret / "sae", [secret], model) is not None  # the same files, inside their own root: fine


def test_symlinked_codebook_file_refused(tree):
    root, secret = tree
    site = root / "cbm" / "codebooks" / "b0"
    site.mkdir(parents=True)
    (site / "codebook.json").write_text("{}")
    (site / "codebook.safetensors").symlink_to(secret / "codebook.safetensors")
    (root / "cbm" / "codebooks.json").write_text(json.dumps({"sites": {"blocks.0": "codebooks/b0"},
                                                             "base": "tokfsm-mamba"}))
    with pytest.raises(ValueError, match=OUTSIDE) as e:
        open_codebook_model(root / "cbm", [root])
    assert "codebook.safetensors" in str(e.value) and str(secret) not in str(e.value)


@pytest.mark.parametrize("named", ["ABS", "../../secret", "../../../../../../../../../etc"])
def test_index_naming_a_path_outside_refused(tree, named):
    root, secret = tree
    named = str(secret) if named == "ABS" else named
    cbm = root / "cbm"
    cbm.mkdir()
    (cbm / "codebooks.json").write_text(json.dumps({"sites": {"blocks.0": named}, "base": "tokfsm-mamba"}))
    with pytest.raises(ValueError, match=OUTSIDE) as e:
        open_codebook_model(cbm, [root])
    assert "codebooks.json" in str(e.value) and str(secret) not in str(e.value)
    with pytest.raises(ValueError, match="points outside its folder"):  # the library check, roots aside
        check_codebook_folder(cbm)


@pytest.mark.parametrize("doc", [
    {"checksums": {"files": {"../../secret/model.safetensors": "0" * 64}}},  # a checksum record
    {"weight_map": {"w": "/etc/hostname"}},  # a sharded checkpoint's index
])
def test_model_folder_json_naming_outside_refused(tree, doc):
    root, _ = tree
    name = "checksums.json" if "checksums" in doc else "model.safetensors.index.json"
    (root / "model" / name).write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=OUTSIDE) as e:
        resolve_model_spec(str(root / "model"), [root])
    assert name in str(e.value)


def test_message_same_for_existing_and_missing_outside_paths(tree, model):
    root, secret = tree
    msgs = {}
    for typed in (secret, secret.parent / "no-such-folder"):
        for check in (lambda p: inside_roots(p, [root]), lambda p: resolve_model_spec(str(p), [root]),
                      lambda p: open_sae(p, [root], model), lambda p: codebook_folder(str(p), [root]),
                      lambda p: open_codebook_model(p, [root])):
            with pytest.raises(ValueError) as e:
                check(typed)
            msgs.setdefault(typed.exists(), []).append(str(e.value).replace(str(typed), "TYPED"))
    assert msgs[True] == msgs[False]
    assert all(m.startswith("TYPED " + OUTSIDE) for m in msgs[True])
    # a link inside the root to an existing file and to a missing one: the same message too
    (root / "a").symlink_to(secret / "config.json")
    (root / "b").symlink_to(secret / "missing.json")
    got = []
    for name in ("a", "b"):
        with pytest.raises(ValueError) as e:
            inside_roots(root / name, [root])
        got.append(str(e.value).replace(str(root / name), "TYPED"))
    assert got[0] == got[1]


def test_symlinked_root_and_folders_inside_still_load(tree, model, tmp_path):
    root, _ = tree
    link_root = tmp_path / "root-link"
    link_root.symlink_to(root)  # the roots given through a symlink: resolved too
    (root / "sae-link").symlink_to(root / "sae")  # a folder reached through a link that stays inside
    sae = open_sae(link_root / "sae-link", [link_root], model)
    assert sae.cfg.hook_name == HOOK
    assert resolve_model_spec(str(link_root / "model"), [link_root]) == str((root / "model").resolve())
    assert inside_roots(root / "model", [link_root], contents=True) == (root / "model").resolve()
    assert (root / "sae").resolve() in find_sae_folders([link_root])
    assert find_folders([link_root], ("config.json",)) == [(root / "model").resolve()]
    # `..` after a linked root is taken from where the link resolves: still outside
    with pytest.raises(ValueError, match=OUTSIDE):
        open_sae(link_root / ".." / "secret", [link_root], model)


def test_a_checksum_record_naming_files_outside_its_folder_is_refused(tmp_path, monkeypatch):
    """The library's own integrity check (used outside the app too) never reads a file a record names outside its
    folder (a ../ path, an absolute path), even when the record is well formed and the digest right."""
    import interp.io as io

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"abc")
    (tmp_path / "secret").write_bytes(b"s")
    io.write_checksums(folder, ["a.bin"])
    assert io.verify_checksums(folder)
    for rel in ("../secret", str(tmp_path / "secret")):  # a hostile record: well formed, the outside file's digest
        monkeypatch.setattr(io, "checksum_record", lambda _folder, _files, rel=rel: {
            "a.bin": io.sha256_file(folder / "a.bin"), rel: io.sha256_file(tmp_path / "secret")})
        io.write_checksums(folder, ["a.bin"])
        with pytest.raises(io.CorruptFileError, match="outside the folder"):
            io.verify_checksums(folder)
