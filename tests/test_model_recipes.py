"""Recipes: every one builds, full-size param counts match the public records, every one trains a few
steps at tiny width; depth recurrence is safe under torch.compile."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pgolf.config import RECIPE_DIR, load_config
from pgolf.model.gpt import GPT, layer_schedule

RECIPES = sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))
SEEDS = ("pr493", "pr1413", "lora-ttt-1xh100")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"

# Reported parameter counts: upstream train_gpt.py (baseline), techniques.md (PR #1413), the 11L
# XSA/EMA/BigramHash(2048) logs (PR #493 line), swapp1990's technical_report.md (PR #1090).
FULL_PARAMS = {"baseline": 17_059_912, "pr1413": 35_943_512, "pr493": 26_829_913, "pr493-bosfix": 26_829_913,
               "lora-ttt-1xh100": 26_502_232, "lora-ttt-1xh100-logged": 27_092_057, "pr1855": 35_945_671}  # the last as its log reports


def test_seed_recipes_present() -> None:
    assert set(SEEDS) | {"baseline", "tiny"} <= set(RECIPES)


@pytest.mark.parametrize("name", sorted(FULL_PARAMS))
def test_full_size_param_counts(name: str) -> None:
    cfg = load_config(name)
    with torch.device("meta"):  # shapes only: no 36M-parameter allocation
        model = GPT(cfg.model)
    assert model.num_params() == FULL_PARAMS[name]


def test_pr1413_shape() -> None:
    cfg = load_config("pr1413")
    m = cfg.model
    assert (m.vocab_size, m.num_layers, m.mlp_hidden, m.rope_dims, m.qk_gain_init) == (8192, 11, 2048, 16, 5.0)
    assert len(layer_schedule(m, False)) == 11 and len(layer_schedule(m, True)) == 15
    assert layer_schedule(m, True)[:10] == [0, 1, 2, 3, 4, 5, 4, 5, 4, 5]
    t = cfg.train
    assert (t.seq_len, t.batch_tokens, t.micro_batch_tokens) == (2048, 786_432, 98_304)
    assert t.batch_tokens // t.micro_batch_tokens == 8  # one micro-batch per GPU on 8 GPUs
    q = cfg.quant
    assert (q.groups[0].bits, q.groups[0].clip, q.groups[0].clip_value, q.groups[0].gptq) == (6, "sdclip", 12.85, True)
    assert (q.groups[1].pattern, q.groups[1].bits, q.groups[1].clip_value) == ("tok_emb.weight", 8, 20.0)
    assert (q.codec, q.byte_shuffle, cfg.eval.method, cfg.data.loader) == ("brotli", True, "ttt-sgd", "shuffled")


def test_lora_ttt_swa_gives_about_15_checkpoints() -> None:
    o = load_config("lora-ttt-1xh100").optim
    steps = 7926  # the record's step count in 4850 s
    assert 14 <= round((1 - o.swa_start_frac) * steps / o.swa_every) <= 16


@pytest.mark.parametrize("name", SEEDS)
def test_seed_recipe_files_document_their_source(name: str) -> None:
    text = (RECIPE_DIR / f"{name}.toml").read_text()
    head = text.split("\n\n")[0]
    assert text.startswith("# Source:") and "val_bpb" in head and "Switches:" in head


def test_docs_table_lists_every_recipe() -> None:
    if not DOCS.is_file():
        pytest.skip(f"{DOCS} not present")
    text = DOCS.read_text()
    for name in RECIPES:
        assert f"`{name}`" in text, f"docs/recipes.md does not mention recipe {name}"


TINY = ["model.vocab_size=64", "model.num_layers=6", "model.model_dim=64", "model.num_heads=4",
        "model.num_kv_heads=2", "train.seq_len=32", "train.micro_batch_tokens=128", "train.batch_tokens=128"]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_three_steps_at_tiny_width(name: str) -> None:
    lanes = load_config(name).model.parallel_from
    cfg = load_config(name, TINY + (["model.parallel_from=4"] if lanes >= 6 else []))  # 6 layers here
    torch.manual_seed(0)
    model = GPT(cfg.model)
    model.set_recurrence(True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    seq = torch.randint(2, 64, (4, 33), generator=g)
    seq[:, 0] = cfg.model.bos_id
    x, y = seq[:, :-1], seq[:, 1:]
    losses = []
    for _ in range(3):
        loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(model(x, y).item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------------------------------------
# torch.compile safety of set_recurrence


def _recurrent_tiny() -> GPT:
    # pr1413 at tiny width, 3 layers, block 1 looped twice more (5 virtual layers), plus a parallel lane.
    cfg = load_config("pr1413", TINY + ["model.num_layers=3", "model.recur_start=1", "model.recur_end=1",
                                        "model.parallel_from=2"]).model
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _check_compiled_recurrence(model: GPT, backend: str, device: str) -> None:
    model = model.to(device)
    idx = torch.randint(2, 64, (2, 32), device=device)
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        off = compiled(idx)
        torch.testing.assert_close(off, model(idx), rtol=1e-4, atol=1e-4)
        model.set_recurrence(True)  # a Python flag: dynamo guards on it and recompiles, never constant-folds
        on = compiled(idx)
        torch.testing.assert_close(on, model(idx), rtol=1e-4, atol=1e-4)
        assert (on - off).abs().max() > 1e-3
        model.set_recurrence(False)
        torch.testing.assert_close(compiled(idx), off, rtol=1e-4, atol=1e-4)


def test_compiled_model_follows_set_recurrence() -> None:
    # aot_eager exercises dynamo guards and AOT tracing; inductor gives the same answer (checked by hand:
    # max |diff| 3.6e-7 vs eager) but needs ~70 s to compile on 2 CPU cores, so it runs in the GPU test.
    _check_compiled_recurrence(_recurrent_tiny(), "aot_eager", "cpu")


@pytest.mark.gpu
def test_inductor_compiled_model_follows_set_recurrence_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    _check_compiled_recurrence(_recurrent_tiny(), "inductor", "cuda")


def test_docs_param_column_matches_the_models():
    """docs/recipes.md states each recipe's parameter count; it must be the built model's."""
    import re
    from pathlib import Path

    from pgolf.config import load_config
    from pgolf.model.gpt import GPT

    text = (Path(__file__).resolve().parents[1] / "docs" / "recipes.md").read_text()
    rows = re.findall(r"^\| `([\w-]+)` \|.*\| ([\d,]+) \|$", text, re.M)
    assert {name for name, _ in rows} >= {"baseline", "tiny", "pr493", "pr1413", "lora-ttt-1xh100"}
    import torch

    for name, count in rows:
        with torch.device("meta"):  # shapes only: no init compute for the full-size models
            params = GPT(load_config(name).model).num_params()
        assert params == int(count.replace(",", "")), name
