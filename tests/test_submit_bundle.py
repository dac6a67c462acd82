"""The single-file train_gpt.py: module closure, determinism, and running without pgolf installed."""
import json
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pgolf.config import load_config
from pgolf.errors import InputError, WorkError
from pgolf.submit import bundle

SITE_DIRS = [d for d in site.getsitepackages() + [site.getusersitepackages()] if Path(d).is_dir()]


def clean_python(code: str, cwd: Path, args: list[str] | None = None, timeout: int = 120):
    """Run python isolated from pgolf: -I (no PYTHONPATH, no cwd on path), -S (no .pth files, so the
    editable pgolf install is invisible) with site-packages added back for torch & co."""
    if any((Path(d) / "pgolf").is_dir() for d in SITE_DIRS):
        pytest.skip("pgolf is installed non-editably in site-packages; cannot hide it")
    prelude = f"import sys; sys.path.extend({SITE_DIRS!r})\n"
    return subprocess.run([sys.executable, "-I", "-S", "-c", prelude + code, *(args or [])], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env={"PATH": "/usr/bin:/bin"})


def pipeline_bundle_ready() -> bool:
    try:
        bundle.module_closure()
    except WorkError:
        return False
    return True


def test_imports_of_finds_every_form():
    src = textwrap.dedent("""
        import os, numpy as np
        from pgolf.config import Config
        from . import tokenizer
        from ..model import gpt
        from pgolf.quant import codecs
        import importlib
        def later():
            from pgolf.eval.plain import evaluate_plain
            import pgolf.metric
            importlib.import_module("pgolf.model.layers")
    """)
    ours, other = bundle.imports_of(src, "pgolf.data.shards", is_pkg=False)
    assert ours == {"pgolf.config", "pgolf.data", "pgolf.data.tokenizer", "pgolf.model", "pgolf.model.gpt",
                    "pgolf.quant", "pgolf.quant.codecs", "pgolf.eval.plain", "pgolf.metric", "pgolf.model.layers"}
    assert other == {"os", "numpy", "importlib"}
    with pytest.raises(WorkError, match="cannot parse"):
        bundle.imports_of("def (:", "pgolf.x", False)


def test_closure_small_entry():
    info = bundle.module_closure("pgolf.eval.plain")
    # plain -> tokenizer, metric; tokenizer -> errors; plus parent packages
    assert {"pgolf", "pgolf.eval", "pgolf.eval.plain", "pgolf.data", "pgolf.data.tokenizer", "pgolf.metric",
            "pgolf.errors"} <= set(info.modules)
    assert "pgolf.model.gpt" not in info.modules and "pgolf.cli" not in info.modules
    assert not any(m.endswith(".commands") for m in info.modules)
    assert set(info.packages) == {m for m in info.modules if (bundle.module_path(m).name == "__init__.py")}
    assert {"torch", "numpy", "sentencepiece"} <= set(info.third_party) and "os" not in info.third_party
    with pytest.raises(WorkError, match="not found"):
        bundle.module_closure("pgolf.no_such_module")


def test_literal_roundtrip():
    import ast

    for text in ["plain", "a '''quote''' and \\n backslash\\", "ends with '", 'x = "\\u2581"\n', "tab\t\x00nul"]:
        assert ast.literal_eval(bundle._literal(text)) == text


def test_code_bytes_consistent_and_seed_independent():
    entry = "pgolf.submit.bundle"
    cfg1, cfg2 = load_config("tiny", ["train.seed=1"]), load_config("tiny", ["train.seed=2"])
    raw = bundle.bundle_code(cfg1, "none", entry=entry)
    assert raw == bundle.bundle_code(cfg2, "none", entry=entry)  # seed is not part of the file
    assert bundle.bundle_code(cfg1, "lzma", entry=entry) == bundle.bundle_code(cfg1, "lzma", entry=entry)
    assert len(bundle.bundle_code(cfg1, "lzma", entry=entry)) < len(raw) / 2
    other = load_config("tiny", ["model.num_layers=3"])
    assert bundle.bundle_code(other, "none", entry=entry) != raw  # the config is embedded
    with pytest.raises(InputError, match="--compress"):
        bundle.bundle_code(cfg1, "zip")
    if pipeline_bundle_ready():
        for c in ("none", "lzma"):
            assert bundle.code_bytes(cfg1, c) == len(bundle.bundle_code(cfg1, c).encode()) == bundle.code_bytes(cfg2, c)


@pytest.mark.parametrize("compress", ["none", "lzma", "brotli"])
def test_bundle_runs_without_pgolf_and_regenerates_itself(tmp_path, compress):
    if compress == "brotli":
        pytest.importorskip("brotli")
    entry = "pgolf.submit.bundle"  # small closure that still contains the bundler
    cfg = load_config("tiny", ["data.path=/somewhere/local", "model.num_layers=2"])
    path = tmp_path / "train_gpt.py"
    path.write_text(bundle.bundle_code(cfg, compress, entry=entry))
    code = textwrap.dedent(f"""
        import json, runpy
        try:
            import pgolf
            print(json.dumps({{"leak": pgolf.__file__}})); raise SystemExit(3)
        except ImportError:
            pass
        g = runpy.run_path("train_gpt.py", run_name="bundle_check")
        import pgolf, pgolf.config, pgolf.submit.bundle as b
        finder = next(m for m in sys.meta_path if hasattr(m, "sources"))
        conf = json.loads(g["CONFIG_JSON"])  # compressed too: the stub exec'd the file in its globals
        cfg = pgolf.config.Config.from_dict(conf)
        regen = b.bundle_code(cfg, {compress!r}, entry={entry!r})
        print(json.dumps({{"file": pgolf.__file__, "mods": sorted(finder.sources), "conf": conf,
                          "regen_equal": regen == open("train_gpt.py").read(),
                          "code_bytes_here": len(regen.encode())}}))
    """)
    r = clean_python(code, tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["file"] == str(tmp_path / "pgolf" / "__init__.py")  # served from the bundle, not /work
    assert out["mods"] == bundle.module_closure(entry).modules
    assert out["conf"]["data"]["path"] == "" and out["conf"]["model"]["num_layers"] == 2
    assert out["conf"]["train"]["seed"] == 1337
    assert out["regen_equal"] is True  # inside the bundle, code bytes are the file itself
    assert out["code_bytes_here"] == path.stat().st_size


@pytest.mark.parametrize("compress", ["none", "lzma"])
def test_pipeline_bundle_imports_without_pgolf(tmp_path, compress):
    if not pipeline_bundle_ready():
        pytest.skip("pgolf.pipeline's imports are not all in the tree yet")
    cfg = load_config("tiny")
    path = tmp_path / "train_gpt.py"
    path.write_text(bundle.bundle_code(cfg, compress))
    code = textwrap.dedent("""
        import json, runpy
        try:
            import pgolf
            raise SystemExit("pgolf importable before the bundle: " + pgolf.__file__)
        except ImportError:
            pass
        runpy.run_path("train_gpt.py", run_name="bundle_check")
        import pgolf.pipeline as p
        print(json.dumps({"main": callable(p.main), "run_pipeline": callable(p.run_pipeline),
                          "file": p.__file__}))
    """)
    r = clean_python(code, tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["main"] and out["run_pipeline"] and out["file"] == str(tmp_path / "pgolf" / "pipeline.py")
    # as a script: the embedded config is passed through to pipeline.main's argument parser
    r = clean_python("import runpy; sys.argv[0] = 'train_gpt.py'; runpy.run_path('train_gpt.py', run_name='__main__')",
                     tmp_path, ["--help"])
    assert r.returncode == 0, r.stderr
    assert "--config-json" in r.stdout and "--data" in r.stdout


SHARED = Path(__file__).resolve().parents[2] / "shared"
MICRO = ["model.model_dim=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
         "train.seq_len=64", "train.batch_tokens=256", "train.micro_batch_tokens=256", "train.max_steps=3",
         "train.max_seconds=0", "train.warmdown_iters=1", "train.compile=off", "train.val_tokens=1024",
         "eval.max_tokens=2048"]


@pytest.mark.slow
def test_bundled_script_matches_pgolf_run(tmp_path):
    """train_gpt.py (lzma, no pgolf installed) reproduces `pgolf run` for the same seed."""
    import itertools

    import numpy as np
    import sentencepiece as spm

    from pgolf.data.corpus import iter_documents
    from pgolf.data.shards import load_split, write_shard

    tok = SHARED / "data" / "tokenizers" / "fineweb_1024_bpe.model"
    standin = SHARED / "data" / "standin" / "standin_000.jsonl.zst"
    val_dir = SHARED / "data" / "fineweb" / "sp1024"
    if not (tok.is_file() and standin.is_file() and val_dir.is_dir()):
        pytest.skip(f"shared data not found under {SHARED}")
    if not pipeline_bundle_ready():
        pytest.skip("pgolf.pipeline's imports are not all in the tree yet")
    sp = spm.SentencePieceProcessor(model_file=str(tok))
    docs = list(itertools.islice(iter_documents([str(standin)]), 60))
    train = np.array([t for ids in sp.encode(docs) for t in [1, *ids]], dtype=np.uint16)
    data = tmp_path / "data"
    write_shard(data / "fineweb_train_000000.bin", train)
    write_shard(data / "fineweb_val_000000.bin", load_split(val_dir, "val", 1024, max_tokens=8192).astype(np.uint16))

    common = ["--data", str(data), "--tokenizer", str(tok), "--no-progress", "--set", "train.seed=5"]
    ref = subprocess.run([sys.executable, "-m", "pgolf.cli", "run", "--recipe", "tiny",
                          *[a for o in MICRO for a in ("--set", o)], "--out", str(tmp_path / "ref"), *common],
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]

    work = tmp_path / "clean"
    work.mkdir()
    (work / "train_gpt.py").write_text(bundle.bundle_code(load_config("tiny", MICRO), "lzma"))
    r = clean_python("import runpy; sys.argv[0] = 'train_gpt.py'; runpy.run_path('train_gpt.py', run_name='__main__')",
                     work, ["--out", str(tmp_path / "bundled"), *common], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a = json.loads((tmp_path / "ref" / "summary.json").read_text())
    b = json.loads((tmp_path / "bundled" / "summary.json").read_text())
    assert b["seed"] == 5 and b["steps"] == a["steps"] == 3
    assert abs(a["val_bpb"] - b["val_bpb"]) < 1e-6 and abs(a["val_bpb_prequant"] - b["val_bpb_prequant"]) < 1e-6
    # the bundle counts itself: code bytes inside it equal those computed by the installed pgolf
    assert a["code_bytes"] == b["code_bytes"] == (work / "train_gpt.py").stat().st_size
    assert a["artifact_bytes"] == b["artifact_bytes"]


def test_bundle_carries_only_the_recipes_eval_method():
    from pgolf.config import load_config
    from pgolf.submit.bundle import module_closure

    plain = module_closure(cfg=load_config("tiny"))  # plain eval
    assert {"pgolf.eval.ttt_sgd", "pgolf.eval.ttt_lora", "pgolf.eval.phased", "pgolf.data.hub"} <= set(plain.skipped)
    assert not set(plain.skipped) & set(plain.modules)
    assert "pgolf.eval.sliding" in plain.modules and "pgolf.eval.audit" in plain.modules
    ttt = module_closure(cfg=load_config("pr1413"))  # score-first TTT
    assert "pgolf.eval.ttt_sgd" in ttt.modules and "pgolf.eval.ttt_lora" not in ttt.modules
    phased = module_closure(cfg=load_config("tiny", ["eval.method=phased"]))
    assert {"pgolf.eval.ttt_sgd", "pgolf.eval.ttt_lora", "pgolf.eval.phased"} <= set(phased.modules)
    # No CLI in any bundle: nothing the pipeline reaches imports it.
    assert not plain.forced and "pgolf.cli" not in plain.modules
