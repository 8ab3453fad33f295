"""``--optimizer muon`` keeps the trainer's promises: exact resume, non-finite steps change nothing, no
switch of optimizer on resume, ``--init-from``, and a Muon-trained run exports to transformers.

The optimizer itself is checked against torch's own ``torch.optim.Muon`` (bit for bit), and the Q/K/V
split against torch's Muon on three separate (C, C) parameters.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import pytest
import torch

from model.checkpoint import checkpoint_path, load_model
from model.config import GPTConfig
from model.generate import generate
from model.gpt import GPT
from tests.cli import one_error
from tests.trainer.conftest import fast, run_trainer
from trainer.checkpoint import ResumeError
from trainer.config import ConfigError, TrainConfig, train_config_from_argv
from trainer.observe import read_metrics
from trainer.optim import MUON_SUFFIXES, make_optimizers
from trainer.train import train

pytestmark = pytest.mark.skipif(
    not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9"
)

# WSD too, so that the resume also shows its lr to be a function of the step alone
MUON = ("--optimizer", "muon", "--muon-lr", "2e-2", "--eval-every", "4", "--ckpt-every", "4",
        "--schedule", "wsd", "--cooldown-frac", "0.5")  # fmt: skip


def run(data: Path, out: Path, *extra: str):
    return train(train_config_from_argv(fast(data, out, *extra)))


def _ckpt(run_dir: Path, step: int) -> dict:
    return torch.load(checkpoint_path(run_dir, step), weights_only=True)


def _assert_same_state(a: dict, b: dict) -> None:
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for key in ("optimizer", "muon"):
        drop_lr = [
            [{k: v for k, v in g.items() if k != "lr"} for g in c[key]["param_groups"]] for c in (a, b)
        ]
        assert drop_lr[0] == drop_lr[1], key  # the lr is the schedule's, set before each step
        assert a[key]["state"].keys() == b[key]["state"].keys(), key
        for i, st in a[key]["state"].items():
            for name, t in st.items():
                assert torch.equal(t, b[key]["state"][i][name]), (key, i, name)


@pytest.fixture(scope="module")
def muon_run(gen_shards: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("muon") / "run"
    run(gen_shards, out, "--max-steps", "8", *MUON)
    return out


def test_checkpoint_holds_both_optimizers_by_name(muon_run: Path):
    c = _ckpt(muon_run, 8)
    muon_names = [n for g in c["muon"]["param_groups"] for n in g["param_names"]]
    adamw_names = [n for g in c["optimizer"]["param_groups"] for n in g["param_names"]]
    assert muon_names and all(n.endswith(MUON_SUFFIXES) for n in muon_names)
    assert "transformer.wte.weight" in adamw_names and "transformer.wpe.weight" in adamw_names
    assert not set(muon_names) & set(adamw_names)
    assert sorted(muon_names + adamw_names) == sorted(k for k in c["model"] if k != "lm_head.weight")
    assert len(c["muon"]["state"]) == len(muon_names)  # a momentum buffer per matrix
    assert c["train_config"]["optimizer"] == "muon"


def test_resume_with_muon_is_exact(gen_shards: Path, muon_run: Path, tmp_path: Path):
    out = tmp_path / "run"
    shutil.copytree(muon_run, out)
    checkpoint_path(out, 8).unlink()  # back to step 4, then resume to 8
    res = run(gen_shards, out, "--max-steps", "8", *MUON, "--resume")
    assert res.start_step == 4
    straight, _ = read_metrics(muon_run / "metrics.jsonl")
    assert [res.losses[s] for s in range(5, 9)] == [straight[s]["loss"] for s in range(5, 9)]
    resumed, _ = read_metrics(out / "metrics.jsonl")
    assert [resumed[s]["lr"] for s in range(1, 9)] == [straight[s]["lr"] for s in range(1, 9)]
    _assert_same_state(_ckpt(muon_run, 8), _ckpt(out, 8))


def test_non_finite_step_with_muon_changes_nothing(gen_shards: Path, tmp_path: Path):
    out = tmp_path / "run"
    res = run(gen_shards, out, "--max-steps", "4", *MUON, "--ckpt-every", "1", "--debug-nan-at-step", "3")
    assert res.bad_steps == 1
    s2, s3, s4 = (_ckpt(out, k) for k in (2, 3, 4))
    _assert_same_state(s2, s3)  # weights, AdamW moments and step counts, Muon momentum: all as before
    assert not torch.equal(
        s3["muon"]["state"][0]["momentum_buffer"], s4["muon"]["state"][0]["momentum_buffer"]
    )


def test_resume_with_another_optimizer_is_refused_in_one_line(gen_shards: Path, muon_run: Path, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(muon_run, out)
    proc = run_trainer(fast(gen_shards, out, "--max-steps", "10", "--resume", "--optimizer", "adamw"))
    one_error(proc, 2, "--optimizer adamw", "recorded muon")  # the run's record refuses it first
    # --force passes the record's rule; the checkpoint still cannot feed another optimizer's state
    with pytest.raises(ResumeError, match=r"trained with --optimizer muon.*asks for --optimizer adamw"):
        run(gen_shards, out, "--max-steps", "10", "--resume", "--optimizer", "adamw", "--force")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000004.pt", "step-00000008.pt"]


def test_init_from_a_run_with_muon(gen_shards: Path, muon_run: Path, tmp_path: Path):
    res = run(gen_shards, tmp_path / "ft", "--init-from", str(muon_run), "--max-steps", "2", *MUON)
    _, source_val = read_metrics(muon_run / "metrics.jsonl")
    assert res.val_losses[0] == source_val[8]  # step 0 evaluates the source's final weights
    assert res.val_losses[2] < res.val_losses[0]


def test_export_hf_of_a_muon_run_generates_the_same_tokens(muon_run: Path, tmp_path: Path):
    transformers = pytest.importorskip("transformers")
    from model.tools.cli import main as model_main

    assert model_main(["export-hf", str(muon_run), "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ours, _ = load_model(muon_run)
    ours.eval()
    ids = torch.tensor([[50257, 464, 3797, 3332, 319, 262]])  # <|startoftext|>The cat sat on the
    with torch.no_grad():
        want = generate(ours, ids, 12, temperature=0.0)
        got = hf.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=50258)
        torch.testing.assert_close(
            hf(ids).logits, ours(ids)[0][..., : hf.config.vocab_size], rtol=0, atol=1e-4
        )
    assert got.tolist() == want.tolist()


def test_ddp_two_ranks_with_muon_match_one_process(gen_shards: Path, tmp_path: Path):
    """2 gloo ranks x micro batch 2 against 1 process x micro batch 4: the same global windows, so the
    same losses, Muon momentum (= the all-reduced gradients) and weights after two steps."""
    import subprocess
    import sys

    from tests.cli import child_env
    from tests.conftest import REPO

    common = ("--max-steps", "2", *MUON, "--ckpt-every", "1", "--total-batch-tokens", "256")
    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "trainer", *fast(gen_shards, ddp, *common)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = tmp_path / "single"
    run(gen_shards, single, *common, "--micro-batch", "4")
    d, _ = read_metrics(ddp / "metrics.jsonl")
    s, _ = read_metrics(single / "metrics.jsonl")
    assert [d[k]["loss"] for k in (1, 2)] == pytest.approx([s[k]["loss"] for k in (1, 2)], rel=1e-5)
    assert _ckpt(ddp, 2)["world_size"] == 2
    d1, s1 = _ckpt(ddp, 1), _ckpt(single, 1)
    for i, st in d1["muon"]["state"].items():  # after step 1: (1 - momentum) x the all-reduced gradient
        ref = s1["muon"]["state"][i]["momentum_buffer"]
        torch.testing.assert_close(st["momentum_buffer"], ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    # weights after step 1: Newton-Schulz runs in bf16, so a last-bit difference in the gradient can move
    # an update element by a bf16 rounding (~1e-5 here, against updates of ~1e-2); rank 0's gradient
    # alone would be off by the size of the update itself
    for k in d1["model"]:
        torch.testing.assert_close(d1["model"][k], s1["model"][k], rtol=1e-3, atol=2e-4)


def test_recipe_flags_are_checked_and_listed():
    cases = (({"optimizer": "sgd"}, "--optimizer"), ({"schedule": "step"}, "--schedule"),
             ({"sampling": "shuffle"}, "--sampling"), ({"cooldown_frac": 0.0}, "--cooldown-frac"),
             ({"muon_momentum": 1.0}, "--muon-momentum"), ({"muon_lr": 0.0}, "--muon-lr"))  # fmt: skip
    for bad, name in cases:
        with pytest.raises(ConfigError, match=name):
            TrainConfig(**bad)
    from trainer.config import build_parser

    text = build_parser().format_help()
    for f in ("--optimizer {adamw,muon}", "--muon-lr", "--muon-momentum", "--muon-split-qkv",
              "--schedule {cosine,wsd}", "--cooldown-frac", "--sampling {random,permutation}"):  # fmt: skip
        assert f in text, f


# --------------------------------------------------------------------------- the optimizer


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("tiny", n_layer=2, n_head=2, n_embd=32, block_size=32))


def _grads(m: GPT, seed: int = 1) -> None:
    idx = torch.randint(0, 50000, (2, 16), generator=torch.Generator().manual_seed(seed))
    m.zero_grad()
    m(idx, idx)[1].backward()


def _muon_params(m: GPT) -> list[torch.nn.Parameter]:
    return [p for n, p in m.named_parameters() if n.endswith(MUON_SUFFIXES)]


def test_guarded_muon_equals_torch_muon_bit_for_bit(model: GPT):
    ref = copy.deepcopy(model)
    ours = make_optimizers(
        model, TrainConfig(optimizer="muon", muon_lr=1e-2, muon_momentum=0.9, muon_split_qkv=False), "cpu"
    )
    ours.guard(torch.zeros(()))
    theirs = torch.optim.Muon(
        _muon_params(ref), lr=1e-2, weight_decay=0.1, momentum=0.9, adjust_lr_fn="match_rms_adamw"
    )
    for seed in range(3):
        for m in (model, ref):
            _grads(m, seed)
        ours.muon.step()
        theirs.step()
    for a, b in zip(_muon_params(model), _muon_params(ref), strict=True):
        assert torch.equal(a, b)


def test_refused_step_changes_no_weight_and_no_state(model: GPT):
    opt = make_optimizers(model, TrainConfig(optimizer="muon"), "cpu")
    found_inf = torch.zeros(())
    opt.guard(found_inf)
    _grads(model)
    opt.step()
    before = copy.deepcopy((model.state_dict(), opt.state_dict()))
    _grads(model, 2)
    for p in model.parameters():
        p.grad[0].fill_(float("nan"))
    found_inf.fill_(1.0)
    opt.step()
    after = opt.state_dict()
    for k, v in before[0].items():
        assert torch.equal(v, model.state_dict()[k]), k
    for key in ("optimizer", "muon"):
        for i, st in before[1][key]["state"].items():
            for name, t in st.items():
                assert torch.equal(t, after[key]["state"][i][name]), (key, i, name)


def test_split_qkv_orthogonalises_q_k_v_as_three_matrices(model: GPT):
    """Reference: torch's Muon on Q, K and V as three separate (C, C) parameters."""
    c = model.config.n_embd
    w = model.transformer.h[0].attn.c_attn.weight
    blocks = [torch.nn.Parameter(b.detach().clone()) for b in w.chunk(3)]
    opt = make_optimizers(model, TrainConfig(optimizer="muon", muon_split_qkv=True, muon_lr=1e-2), "cpu")
    ref = torch.optim.Muon(blocks, lr=1e-2, weight_decay=0.1, momentum=0.95, adjust_lr_fn="match_rms_adamw")
    _grads(model)
    for b, g in zip(blocks, w.grad.chunk(3), strict=True):
        b.grad = g.clone()
    opt.muon.step()
    ref.step()
    assert w.shape == (3 * c, c)
    assert torch.equal(w.detach(), torch.cat([b.detach() for b in blocks]))


def test_missing_muon_is_one_line_naming_both_versions(monkeypatch):
    monkeypatch.delattr(torch.optim, "Muon")
    with pytest.raises(ConfigError, match=rf"torch >= 2\.9.*this is torch {re.escape(torch.__version__)}"):
        TrainConfig(optimizer="muon")


def test_gpt2_trains_with_muon_and_the_classic_recipe_is_one_preset_away():
    cfg = train_config_from_argv(["--data", "d", "--out", "o"])
    assert (cfg.preset, cfg.optimizer, cfg.muon_lr, cfg.lr, cfg.schedule) == (
        "gpt2",
        "muon",
        6e-3,
        6e-4,
        "wsd",
    )
    assert cfg.muon_split_qkv  # the grid's Q/K/V measurement
    classic = train_config_from_argv(["--data", "d", "--out", "o", "--preset", "gpt2-classic"])
    assert (classic.optimizer, classic.schedule, classic.sampling) == ("adamw", "cosine", "random")
    same = ("model", "lr", "total_batch_tokens", "max_steps", "warmup_steps", "seq_len", "micro_batch")
    assert [getattr(classic, k) for k in same] == [getattr(cfg, k) for k in same]
