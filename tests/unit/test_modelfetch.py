"""``make models`` (glimpse3d.core.modelfetch) with a fetcher that copies from a local folder laid
out like the hub (``<root>/<repo_id>/<files>``), and the real huggingface_hub path in offline mode.
Also: every learned backend's load path switches the hub libraries offline."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from glimpse3d.core import modelfetch as mf
from glimpse3d.core.backends import BackendRegistry, service_names
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.models import MANIFEST_NAME, ModelMissing, ModelSource

ALPHA = ModelSource(
    name="test/alpha", repo_id="org/alpha", revision="main", files=("config.json", "weights/*.bin"),
    licence="MIT", gpu_memory="1 GB", used_by=("svc/a",),
)
BETA = ModelSource(
    name="test/beta", repo_id="org/beta", revision="v2", files=("model.safetensors",), licence="Apache-2.0",
    used_by=("svc/b",),
)
FILES = {
    "org/alpha": {"config.json": b'{"hidden": 32}', "weights/a.bin": b"A" * 3000, "weights/b.bin": b"B" * 10,
                  "README.md": b"not fetched", "other.safetensors": b"not fetched"},
    "org/beta": {"model.safetensors": bytes(range(256)) * 40, "config.json": b"{}"},
}


class LocalFetcher:
    """Copies the matching files of ``<root>/<repo_id>`` (temp file + rename) and records its calls."""

    def __init__(self, root: Path, published: dict[str, str] | None = None) -> None:
        self.root = root
        self.calls: list[tuple[str, bool]] = []
        self.published = published or {}

    def fetch(self, source: ModelSource, dest: Path, force: bool = False) -> mf.Snapshot:
        self.calls.append((source.name, force))
        repo = self.root / source.repo_id
        for path in sorted(p for p in repo.rglob("*") if p.is_file()):
            rel = path.relative_to(repo).as_posix()
            target = dest / rel
            if mf.matches(rel, source.files) and (force or not target.exists()):
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target.with_name(target.name + ".part"))
                os.replace(target.with_name(target.name + ".part"), target)
        commit = hashlib.sha1(f"{source.repo_id}@{source.revision}".encode()).hexdigest()
        return mf.Snapshot(commit=commit, published_sha256=self.published)


@pytest.fixture
def hub(tmp_path) -> Path:
    root = tmp_path / "hub"
    for repo, files in FILES.items():
        for rel, data in files.items():
            (root / repo / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / repo / rel).write_bytes(data)
    return root


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return tmp_path / "models"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_fetch_writes_the_published_layout_and_the_manifest(hub, model_dir) -> None:
    fetcher = LocalFetcher(hub)
    fetched, current, errors = mf.fetch_all([ALPHA, BETA], model_dir, fetcher)
    assert (fetched, current, errors) == (["test/alpha", "test/beta"], [], [])
    alpha = model_dir / "test/alpha"
    assert sorted(p.relative_to(alpha).as_posix() for p in alpha.rglob("*") if p.is_file()) == [
        "config.json", "weights/a.bin", "weights/b.bin"]
    data = json.loads((model_dir / MANIFEST_NAME).read_text())
    assert data["format"] == 1 and sorted(data["models"]) == ["test/alpha", "test/beta"]
    entry = data["models"]["test/alpha"]
    assert entry["repo_id"] == "org/alpha" and entry["revision"] == "main" and len(entry["commit"]) == 40
    assert entry["patterns"] == ["config.json", "weights/*.bin"] and entry["licence"] == "MIT"
    assert entry["used_by"] == ["svc/a"]
    assert entry["files"] == {rel: {"sha256": sha(FILES["org/alpha"][rel]), "size": len(FILES["org/alpha"][rel])}
                              for rel in ("config.json", "weights/a.bin", "weights/b.bin")}
    fetched_at = dt.datetime.fromisoformat(entry["fetched_at"])
    assert fetched_at.tzinfo is not None and abs(dt.datetime.now(dt.UTC) - fetched_at) < dt.timedelta(minutes=5)
    assert [p.name for p in model_dir.iterdir() if p.name.startswith(".")] == []  # no temporary manifest left


def test_second_run_fetches_nothing(hub, model_dir) -> None:
    fetcher = LocalFetcher(hub)
    mf.fetch_all([ALPHA, BETA], model_dir, fetcher)
    manifest = (model_dir / MANIFEST_NAME).read_bytes()
    shutil.rmtree(hub)  # a second run must not need the source at all
    fetched, current, errors = mf.fetch_all([ALPHA, BETA], model_dir, fetcher)
    assert (fetched, current, errors) == ([], ["test/alpha", "test/beta"], [])
    assert len(fetcher.calls) == 2 and (model_dir / MANIFEST_NAME).read_bytes() == manifest


def test_verify_catches_a_flipped_byte_and_a_missing_file_then_fetch_repairs(hub, model_dir, capsys) -> None:
    fetcher = LocalFetcher(hub)
    mf.fetch_all([ALPHA, BETA], model_dir, fetcher)
    assert mf.verify_all([ALPHA, BETA], model_dir) == []
    weights = model_dir / "test/alpha/weights/a.bin"
    raw = bytearray(weights.read_bytes())
    raw[1234] ^= 0x01  # same size, one bit different
    weights.write_bytes(bytes(raw))
    (model_dir / "test/beta/model.safetensors").unlink()
    problems = mf.verify_all([ALPHA, BETA], model_dir)
    assert [(p.model, p.path.name if p.path else None) for p in problems] == [
        ("test/alpha", "a.bin"), ("test/beta", "model.safetensors")]
    assert "sha256 differs" in problems[0].what and problems[1].what == "missing"
    # The command line: exit status 1 and one line per bad file, nothing fetched.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mf, "collect_models", lambda: (ALPHA, BETA))
        assert mf.main(["--verify", "--model-dir", str(model_dir)], fetcher=fetcher) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "a.bin" in out[0] and "model.safetensors" in out[1] and len(fetcher.calls) == 2
    # A fetch run downloads the two broken models again (the corrupted file is replaced) and verifies.
    fetched, current, errors = mf.fetch_all([ALPHA, BETA], model_dir, fetcher)
    assert (fetched, current, errors) == (["test/alpha", "test/beta"], [], [])
    assert weights.read_bytes() == FILES["org/alpha"]["weights/a.bin"] and mf.verify_all([ALPHA, BETA], model_dir) == []


def test_a_resized_file_and_a_changed_source_are_fetched_again(hub, model_dir) -> None:
    fetcher = LocalFetcher(hub)
    mf.fetch_all([ALPHA], model_dir, fetcher)
    (model_dir / "test/alpha/config.json").write_bytes(b"{}")
    [problem] = mf.verify_all([ALPHA], model_dir)
    assert "2 bytes, the manifest says 14" in problem.what
    moved = ModelSource(**{**ALPHA.__dict__, "revision": "v3"})
    [problem] = mf.verify_all([moved], model_dir)
    assert "org/alpha@main" in problem.what and "org/alpha@v3" in problem.what
    assert mf.fetch_all([moved], model_dir, fetcher)[0] == ["test/alpha"]
    assert mf.read_manifest(model_dir)["test/alpha"]["revision"] == "v3" and mf.verify_all([moved], model_dir) == []


def test_only_and_list(hub, model_dir, capsys, monkeypatch) -> None:
    monkeypatch.setattr(mf, "collect_models", lambda: (ALPHA, BETA))
    fetcher = LocalFetcher(hub)
    assert mf.main(["--model-dir", str(model_dir), "--only", "test/beta"], fetcher=fetcher) == 0
    assert fetcher.calls == [("test/beta", False)] and not (model_dir / "test/alpha").exists()
    assert "1 fetched, 0 already verified, 0 failed" in capsys.readouterr().out
    assert mf.main(["--model-dir", str(model_dir), "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t") == ["test/alpha", "org/alpha@main", "not fetched", "svc/a"]
    assert lines[1].startswith("test/beta\torg/beta@v2\tfetched ") and len(lines) == 2
    assert mf.main(["--list", "--markdown", "--only", "test/alpha"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| Model |") and len(table) == 3 and "`test/alpha`" in table[2] and "1 GB" in table[2]
    assert mf.main(["--model-dir", str(model_dir), "--only", "test/nope"], fetcher=fetcher) == 2
    assert "unknown model(s) test/nope" in capsys.readouterr().err and len(fetcher.calls) == 1
    with pytest.raises(InvalidInput):
        mf.select([ALPHA], ["test/alpha", "x/y"])


def test_opt_in_models_are_fetched_only_when_named_or_with_all(hub, model_dir, monkeypatch) -> None:
    gated = dataclasses.replace(BETA, opt_in=True)
    monkeypatch.setattr(mf, "collect_models", lambda: (ALPHA, gated))
    fetcher = LocalFetcher(hub)
    assert mf.main(["--model-dir", str(model_dir)], fetcher=fetcher) == 0
    assert [name for name, _ in fetcher.calls] == ["test/alpha"]
    assert mf.main(["--model-dir", str(model_dir), "--verify"]) == 0  # the opt-in model is not expected
    assert mf.main(["--model-dir", str(model_dir), "--all"], fetcher=fetcher) == 0
    assert [name for name, _ in fetcher.calls] == ["test/alpha", "test/beta"]
    assert mf.select([ALPHA, gated], ["test/beta"], everything=False) == [gated]


def test_bad_sources_fail_that_model_only(hub, model_dir) -> None:
    no_match = ModelSource(name="test/gamma", repo_id="org/alpha", revision="main",
                           files=("config.json", "pytorch_model.bin"), licence="MIT")
    fetched, _, errors = mf.fetch_all([no_match, BETA], model_dir, LocalFetcher(hub))
    assert fetched == ["test/beta"] and len(errors) == 1
    assert "test/gamma" in errors[0] and "no file matching pytorch_model.bin" in errors[0]
    assert sorted(mf.read_manifest(model_dir)) == ["test/beta"]
    # A file whose sha256 differs from what the source publishes is deleted, and the model not recorded.
    lying = LocalFetcher(hub, published={"model.safetensors": "0" * 64})
    shutil.rmtree(model_dir)
    _, _, errors = mf.fetch_all([BETA], model_dir, lying)
    assert "publishes " + "0" * 64 in errors[0] and not (model_dir / "test/beta/model.safetensors").exists()
    assert mf.read_manifest(model_dir) == {}


def test_manifest_writes_are_atomic_and_a_broken_manifest_is_reported(hub, model_dir, monkeypatch, capsys) -> None:
    mf.fetch_all([ALPHA], model_dir, LocalFetcher(hub))
    before = (model_dir / MANIFEST_NAME).read_bytes()

    def interrupted(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(mf.os, "replace", interrupted)
    with pytest.raises(OSError, match="disk full"):
        mf.write_manifest(model_dir, {"test/other": {}})
    monkeypatch.undo()
    assert (model_dir / MANIFEST_NAME).read_bytes() == before
    assert sorted(p.name for p in model_dir.iterdir()) == [MANIFEST_NAME, "test"]
    (model_dir / MANIFEST_NAME).write_text("{not json")
    monkeypatch.setattr(mf, "collect_models", lambda: (ALPHA,))
    assert mf.main(["--verify", "--model-dir", str(model_dir)]) == 2
    assert "delete it" in capsys.readouterr().err


def test_the_hub_fetcher_offline_names_the_repository(model_dir, monkeypatch, capsys) -> None:
    # HF_HUB_OFFLINE=1 (set for the whole test run) makes huggingface_hub refuse before any network access.
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    from glimpse3d.services.backprojection.weights import CLIP_BASE, MODELS

    source = next(m for m in MODELS if m.name == CLIP_BASE)
    with pytest.raises(mf.FetchError) as info:
        mf.HubFetcher().fetch(source, model_dir / source.name)
    assert "openai/clip-vit-base-patch32@main" in info.value.message and "HF_HUB_OFFLINE" in info.value.message
    assert mf.main(["--model-dir", str(model_dir), "--only", CLIP_BASE]) == 1
    captured = capsys.readouterr()
    assert "0 fetched" in captured.out and "openai/clip-vit-base-patch32" in captured.err
    assert not (model_dir / MANIFEST_NAME).exists()


def test_models_of_every_installed_service_are_collected_without_torch() -> None:
    code = ("import sys, json; from glimpse3d.core import modelfetch as mf; ms = mf.collect_models(); "
            "print(json.dumps([[m.name for m in ms], sorted(k for k in ('torch', 'transformers', 'diffusers') "
            "if k in sys.modules)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    names, heavy = json.loads(out.stdout)
    assert heavy == [], f"a models module imports {heavy}; MODELS must be importable without them"
    assert {"clip/clip-vit-base-patch32", "clip/clip-vit-large-patch14"} <= set(names) and len(names) == len(set(names))
    for source in mf.collect_models():
        assert source.repo_id.count("/") == 1 and source.revision and source.licence and source.used_by, source.name
    assert [m.name for m in mf.collect_models(("no-such-service", "backprojection"))] == [
        "clip/clip-vit-base-patch32", "clip/clip-vit-large-patch14"]
    # The research harness registers its metric weights through the glimpse3d.weights entry point group.
    assert "lpips/vgg16-tv-in1k" in names and names[-1] == "lpips/vgg16-tv-in1k"


def test_a_model_listed_twice_is_merged_or_rejected() -> None:
    again = ModelSource(**{**ALPHA.__dict__, "used_by": ("svc/c", "svc/a")})
    assert mf._merge(ALPHA, again, "svc").used_by == ("svc/a", "svc/c")
    with pytest.raises(InvalidInput, match="listed twice"):
        mf._merge(ALPHA, ModelSource(**{**ALPHA.__dict__, "repo_id": "org/other"}), "svc")


def test_docs_table_is_generated_from_models(repo_root, tmp_path) -> None:
    docs = repo_root / "docs" / "models.md"
    text = docs.read_text()
    table = text[text.index(mf.DOCS_BEGIN) + len(mf.DOCS_BEGIN):text.index(mf.DOCS_END)].strip()
    assert table == mf.markdown_table(mf.collect_models()), (
        "docs/models.md is out of date: run `python -m glimpse3d.core.modelfetch --docs docs/models.md`")
    copy = tmp_path / "models.md"
    copy.write_text(text.replace(table, "| stale |"))
    assert mf.update_docs(copy, mf.collect_models()) and copy.read_text() == text
    assert not mf.update_docs(copy, mf.collect_models())


def _learned_backends(model_dir: Path):
    """(service, name, backend) for every registered backend whose constructor takes ``model_dir``."""
    for service in service_names():
        registry = BackendRegistry(service)
        for name in registry.names():
            backend = registry.create(name, context={"model_dir": model_dir, "device": "cpu"})
            if "model_dir" in type(backend).Options.model_fields:
                yield service, name, backend
    from glimpse3d.services.backprojection.api import make_backend

    yield "backprojection", "mvcrm+clip", make_backend("mvcrm", model_dir=model_dir, clip_model="clip/x")


def test_learned_backends_load_offline(tmp_path, monkeypatch) -> None:
    """With an empty model directory every learned backend's load() switches the hub libraries
    offline and then fails with FAILED_PRECONDITION naming `make models` (never a download)."""
    checked = []
    for service, name, backend in _learned_backends(tmp_path):
        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE"):
            monkeypatch.delenv(key, raising=False)
        try:
            backend.load()
        except ModelMissing as err:
            assert "make models" in err.message, f"{service}/{name}: {err.message}"
            assert os.environ.get("HF_HUB_OFFLINE") == "1", f"{service}/{name} did not call offline_hub()"
            checked.append(f"{service}/{name}")
    assert "backprojection/mvcrm+clip" in checked and len(checked) >= 2, checked


def test_the_hub_fetcher_downloads_the_resolved_commit_and_checks_published_hashes(hub, model_dir, monkeypatch) -> None:
    """huggingface_hub's two calls replaced by stand-ins that serve the local folder: the fetcher
    resolves the revision first, downloads exactly that commit, and compares the published sha256."""
    import huggingface_hub
    from huggingface_hub.hf_api import BlobLfsInfo, RepoSibling

    commit = "c" * 40
    weights = FILES["org/beta"]["model.safetensors"]
    lfs = {"model.safetensors": sha(weights), "config.json": "f" * 64}  # config.json is not fetched: ignored
    calls = []

    class FakeApi:
        def model_info(self, repo_id, *, revision=None, files_metadata=False, **_):
            calls.append(("model_info", repo_id, revision, files_metadata))
            siblings = [RepoSibling(rel, len(data), lfs=BlobLfsInfo(len(data), lfs[rel], 134) if rel in lfs else None)
                        for rel, data in FILES[repo_id].items()]
            return type("Info", (), {"sha": commit, "siblings": siblings})()

    def fake_snapshot(repo_id, *, revision, allow_patterns, local_dir, force_download=False, **_):
        calls.append(("snapshot_download", repo_id, revision, tuple(allow_patterns), force_download))
        LocalFetcher(hub).fetch(ModelSource(name="x/y", repo_id=repo_id, revision=revision,
                                            files=tuple(allow_patterns), licence=""), Path(local_dir))
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    fetched, _, errors = mf.fetch_all([BETA], model_dir, mf.HubFetcher())
    assert (fetched, errors) == (["test/beta"], [])
    assert calls == [("model_info", "org/beta", "v2", True),
                     ("snapshot_download", "org/beta", commit, ("model.safetensors",), False)]
    entry = mf.read_manifest(model_dir)["test/beta"]
    assert entry["commit"] == commit and entry["revision"] == "v2"
    assert entry["files"] == {"model.safetensors": {"sha256": sha(weights), "size": len(weights)}}
    lfs["model.safetensors"] = "0" * 64  # the hub now publishes another hash than the bytes received
    _, _, errors = mf.fetch_all([BETA], model_dir, mf.HubFetcher(), force=True)
    assert "publishes " + "0" * 64 in errors[0] and calls[-1][-1] is True
