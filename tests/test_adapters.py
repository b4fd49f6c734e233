"""Adapters (model/adapters/): LoRA, per-task and routed LoRA experts, PALs.

Tiny random models for the logic; MiniLM and peft for the interchange with peft."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from minbert.config import ConfigError, load_config
from minbert.data.batching import encode_task
from minbert.data.io import TaskData
from minbert.data.tasks import TASKS
from minbert.model.adapters import is_adapter_parameter, is_base_parameter
from minbert.model.adapters.lora import LoRALinear, lora_layers
from minbert.model.adapters.molora import RoutedContext
from minbert.model.multitask import MultiTaskModel
from minbert.train.trainable import freeze_all_but

TASK_ROWS = {
    "sst": [("the movie is good .",), ("a bad film",), ("what is not great ?",)],
    "quora": [("the dog was good", "a dog is good"), ("why run ?", "how play ?"), ("a", "b")],
    "sts": [("the cat", "the cat !"), ("a dog", "the film"), ("good", "bad")],
}
LABELS = {"sst": [0, 4, 2], "quora": [1.0, 0.0, 1.0], "sts": [4.5, 1.0, 2.5]}


def _batch(task, tokenizer, config):
    kind = np.int64 if TASKS[task].label_kind == "class" else np.float32
    ids = [f"r{i}" for i in range(3)]
    data = TaskData(task, "train", None, ids, TASK_ROWS[task], np.asarray(LABELS[task], kind), [])
    return encode_task(data, tokenizer, 32, bi_encode=config.bi_encoded(task)).batch(np.arange(3))


def _model(tiny_config, adapter: list[str], tasks=("sst", "quora", "sts"), extra=()):
    from minbert.model.bert import BertModel

    config = load_config(
        None, [f"train.tasks={list(tasks)}", "heads.sst.own_layers=1", *adapter, *extra]
    )
    torch.manual_seed(0)
    encoder = BertModel(tiny_config)
    return MultiTaskModel(encoder, config.head_specs(), adapter=config.adapter), config


def _outputs(model, config, tokenizer, tasks=("sst", "quora", "sts")):
    model.eval()
    with torch.no_grad():
        return {t: model(t, _batch(t, tokenizer, config)) for t in tasks}


def _randomise(model, names=("lora_B", "decode"), seed=1):
    """Adapter weights that start at zero (B, V_D) set at random, so the adapter acts."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_adapter_parameter(name) and any(n in name for n in names):
                p.copy_(0.2 * torch.randn(p.shape, generator=generator))


ADAPTERS = {
    "lora": ["adapter.kind=lora"],
    "molora": ["adapter.kind=molora"],
    "routed": ["adapter.kind=molora", "adapter.molora.router=token"],
    "pals": ["adapter.kind=pals", "adapter.pals.size=16", "adapter.pals.heads=4"],
}


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_a_new_adapter_leaves_the_model_unchanged_and_keeps_the_base_names(
    tiny_config, tiny_tokenizer, kind
):
    plain, config = _model(tiny_config, [])
    adapted, adapted_config = _model(tiny_config, ADAPTERS[kind])
    want = _outputs(plain, config, tiny_tokenizer)
    got = _outputs(adapted, adapted_config, tiny_tokenizer)
    for task in want:
        torch.testing.assert_close(got[task], want[task], rtol=0, atol=1e-6)
    base_keys = set(plain.state_dict())
    adapted_keys = set(adapted.state_dict())
    assert base_keys <= adapted_keys  # no base weight renamed
    assert all(is_adapter_parameter(k) for k in adapted_keys - base_keys)
    _randomise(adapted)
    changed = _outputs(adapted, adapted_config, tiny_tokenizer)
    assert all((changed[t] - want[t]).abs().max() > 1e-4 for t in want)


@pytest.mark.parametrize("kind", ["lora", "molora"])
def test_merged_equals_unmerged_and_unmerge_restores_the_base(tiny_config, tiny_tokenizer, kind):
    model, config = _model(tiny_config, ADAPTERS[kind])
    _randomise(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unmerged = _outputs(model, config, tiny_tokenizer)
    for task in config.train.tasks:
        pair = "default" if kind == "lora" else task
        layers = [layer for _, layer in lora_layers(model) if pair in layer.lora_A]
        for layer in layers:
            layer.merge(pair)
        (merged,) = _outputs(model, config, tiny_tokenizer, [task]).values()
        torch.testing.assert_close(merged, unmerged[task], rtol=0, atol=1e-5)
        for layer in layers:
            layer.unmerge()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_with_the_base_frozen_only_adapter_and_head_parameters_get_gradients(
    tiny_config, tiny_tokenizer, kind
):
    model, config = _model(tiny_config, ADAPTERS[kind])
    _randomise(model)  # B = 0 would give A no gradient
    freeze_all_but(model, config.trainable_patterns(), config.adapter.freezes_base)
    model.train()
    for task in config.train.tasks:
        model(task, _batch(task, tiny_tokenizer, config)).float().sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad <= trainable
    assert not any(is_base_parameter(n) for n in trainable)
    assert any(is_adapter_parameter(n) for n in with_grad)
    assert any(n.startswith("heads.") and not is_adapter_parameter(n) for n in with_grad)
    assert all(p.grad is None for n, p in model.named_parameters() if is_base_parameter(n))


def test_on_top_of_full_fine_tuning_the_base_trains_too(tiny_config):
    model, config = _model(tiny_config, [*ADAPTERS["lora"], "adapter.train_base=true"])
    freeze_all_but(model, config.trainable_patterns(), config.adapter.freezes_base)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("kind", ["molora", "pals"])
def test_changing_one_tasks_adapter_leaves_the_other_tasks_outputs_unchanged(
    tiny_config, tiny_tokenizer, kind
):
    model, config = _model(tiny_config, ADAPTERS[kind])
    _randomise(model)
    before = _outputs(model, config, tiny_tokenizer)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_adapter_parameter(name) and ".quora." in name:
                p.add_(1.0)
    after = _outputs(model, config, tiny_tokenizer)
    assert (after["quora"] - before["quora"]).abs().max() > 1e-3
    for task in ("sst", "sts"):
        torch.testing.assert_close(after[task], before[task], rtol=0, atol=0)


def test_router_gradients_flow_and_the_balance_loss_is_least_for_uniform_routing(
    tiny_config, tiny_tokenizer
):
    from minbert.model.adapters.molora import RouterBalance

    model, config = _model(tiny_config, ADAPTERS["routed"])
    _randomise(model)
    model.train()
    (term,) = model.adapter.terms()
    batch = _batch("sst", tiny_tokenizer, config)
    out = model("sst", batch)
    loss = out.float().sum() + term.value(out, batch.labels)
    loss.backward()
    # the layers SST runs: the shared first, its own copy of the top (not the shared top)
    used = ("encoder.encoder.layer.0.", "heads.sst.own_layers.")
    routers = [p for n, p in model.named_parameters() if "lora_router" in n and n.startswith(used)]
    assert len(routers) == 12 and all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in routers
    )
    usage = model.adapter.epoch_log()["expert_usage"]
    assert set(usage) == {"sst"} and abs(sum(usage["sst"]) - 1) < 1e-6

    # the Switch balance loss: 1 for uniform routing, more when routing favours experts
    context = RoutedContext(experts=4)
    uniform = torch.full((12, 4), 0.25)
    spread = torch.arange(12).remainder(4)[:, None]  # each expert chosen as often
    context.record(uniform, spread, training=False)
    skewed = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).repeat(12, 1)
    context.record(skewed, torch.zeros(12, 1, dtype=torch.long), training=False)
    balanced, unbalanced = (b.item() for b in context.balance)
    assert balanced == pytest.approx(1.0) and unbalanced > balanced
    assert RouterBalance(context, 0.5).value(torch.zeros(1), None).item() == pytest.approx(
        0.5 * (balanced + unbalanced) / 2
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["adapter.kind=lora", "adapter.lora.targets=['quer']"], "'quer' matches no linear layer"),
        (["adapter.kind=lora", "adapter.lora.targets=[]"], "name at least one layer"),
        (["adapter.kind=lora", "adapter.lora.r=0"], "adapter.lora.r"),
        (["adapter.kind=lorax"], "adapter.kind: 'lorax' is not allowed"),
        (["adapter.kind=pals", "adapter.pals.size=10", "adapter.pals.heads=4"], "not divisible"),
        (["adapter.kind=molora", "adapter.molora.router=token", "adapter.molora.top_k=5"], "top_k"),
        (["adapter.lora.load=x"], "needs adapter.kind = 'lora'"),
        (["adapter.kind=lora", "model.mode=frozen"], "model.mode: 'frozen'"),
    ],
)
def test_bad_adapter_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_rank_larger_than_a_layer_is_refused_naming_the_layer(tiny_config):
    with pytest.raises(
        ConfigError, match=r"attention.self.query: rank 40 is larger than a 32 x 32"
    ):
        _model(tiny_config, ["adapter.kind=lora", "adapter.lora.r=40"])


def test_a_deep_copy_of_a_per_task_model_follows_its_own_tasks(tiny_config, tiny_tokenizer):
    model, config = _model(tiny_config, ADAPTERS["molora"])
    _randomise(model)
    twin = copy.deepcopy(model)
    torch.testing.assert_close(
        _outputs(twin, config, tiny_tokenizer)["quora"],
        _outputs(model, config, tiny_tokenizer)["quora"],
    )
    layer = next(layer for _, layer in lora_layers(twin))
    assert isinstance(layer, LoRALinear) and layer.context is twin.adapter.context


# -- runs: train, save, load, export --------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_run(tiny_setup, tmp_path_factory):
    from tiny_run import QUICK, tiny_overrides

    from minbert.cli import main

    out = tmp_path_factory.mktemp("lora") / "run"
    sets = [*tiny_overrides(tiny_setup), *QUICK, "adapter.kind=lora", "adapter.lora.r=4"]
    sets += ["train.lr=1e-2"]
    assert main(["train", "--out", str(out), *sum((["--set", s] for s in sets), [])]) == 0
    return out


def test_an_adapter_run_stores_what_changed_and_rebuilds_exactly(lora_run, tiny_setup):
    from safetensors.torch import load_file

    from minbert.run.model_dir import load_model_dir

    stored = load_file(lora_run / "best" / "model.safetensors")
    assert stored and not any(is_base_parameter(k) for k in stored)
    assert any(".lora_B.default." in k for k in stored)
    assert any(v.abs().sum() > 0 for k, v in stored.items() if ".lora_B." in k)  # it trained
    meta = json.loads((lora_run / "best" / "meta.json").read_text())
    assert meta["base"]["model"] == str(tiny_setup / "model")
    model, tokenizer, config = load_model_dir(lora_run)
    state = model.state_dict()
    for key, value in stored.items():
        assert torch.equal(state[key], value)


def test_an_adapter_run_on_another_base_is_refused(lora_run, tmp_path):
    import shutil

    from minbert.model.loading import WeightsError
    from minbert.run.model_dir import load_model_dir

    copy_dir = tmp_path / "run"
    shutil.copytree(lora_run, copy_dir)
    meta_file = copy_dir / "best" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["base"]["fingerprint"] = "0" * 64
    meta_file.write_text(json.dumps(meta))
    from minbert.run.manifest import write_manifest

    write_manifest(copy_dir / "best")
    with pytest.raises(WeightsError, match="are not the ones the adapter was trained on"):
        load_model_dir(copy_dir)


@pytest.fixture(scope="module")
def molora_run(tiny_setup, tmp_path_factory):
    from tiny_run import QUICK, tiny_overrides

    from minbert.cli import main

    out = tmp_path_factory.mktemp("molora") / "run"
    sets = [*tiny_overrides(tiny_setup), *QUICK, "adapter.kind=molora", "adapter.molora.r=4"]
    sets += ["train.lr=1e-2", "heads.sst.own_layers=1"]
    assert main(["train", "--out", str(out), *sum((["--set", s] for s in sets), [])]) == 0
    return out


def _hf_outputs(directory, model_input):
    from transformers import BertModel as HFBertModel

    hf = HFBertModel.from_pretrained(directory).eval()
    ids, mask = model_input
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask).last_hidden_state


def _tiny_input():
    ids = torch.tensor([[2, 7, 8, 9, 3], [2, 10, 3, 0, 0]])
    return ids, (ids != 0).long()


def _task_encoder_output(model, task, model_input):
    """What ``task`` reads of the encoder: the shared layers with its LoRA, its own top."""
    ids, mask = model_input
    head = model.heads[task]
    with torch.no_grad(), model.running(task):
        return model.encoder(ids, mask, top=head.own_layers).last_hidden_state


def test_export_merge_writes_a_bert_directory_per_task_that_transformers_loads(
    molora_run, tmp_path, capsys
):
    from minbert.cli import main
    from minbert.run.model_dir import load_model_dir

    model, _, _ = load_model_dir(molora_run)
    assert main(["export", str(molora_run), str(tmp_path / "merged"), "--merge"]) == 0
    real = _tiny_input()[1].bool()
    for task in ("sst", "quora", "sts"):
        got = _hf_outputs(tmp_path / "merged" / task, _tiny_input())
        want = _task_encoder_output(model, task, _tiny_input())
        assert (got[real] - want[real]).abs().max() <= 1e-4
    capsys.readouterr()
    assert (
        main(["export", str(molora_run), str(tmp_path / "x"), "--merge", "--tasks", "cfimdb"]) == 2
    )
    assert "['cfimdb'] have no adapter in this run; it trained" in capsys.readouterr().err


def test_export_without_merge_writes_the_base_and_peft_adapters(lora_run, tmp_path):
    from minbert.cli import main
    from minbert.run.model_dir import load_model_dir

    model, _, _ = load_model_dir(lora_run)
    out = tmp_path / "export"
    assert main(["export", str(lora_run), str(out)]) == 0
    from transformers import BertModel as HFBertModel

    hf = HFBertModel.from_pretrained(out).eval()
    adapted = peft.PeftModel.from_pretrained(hf, out / "adapter").eval()
    ids, mask = _tiny_input()
    with torch.no_grad():
        got = adapted(input_ids=ids, attention_mask=mask).last_hidden_state
        want = model.encoder(ids, mask).last_hidden_state
    real = mask.bool()
    assert (got[real] - want[real]).abs().max() <= 1e-4
    merged = tmp_path / "merged"
    assert main(["export", str(lora_run), str(merged), "--merge"]) == 0
    torch.testing.assert_close(
        _hf_outputs(merged, (ids, mask))[real], want[real], atol=1e-4, rtol=0
    )


def test_an_adapter_run_as_a_starting_model_names_the_merge_export(lora_run):
    from minbert.model.loading import WeightsError, load_pretrained

    with pytest.raises(WeightsError, match="export .* DIR --merge"):
        load_pretrained(lora_run)


def test_pals_and_routed_runs_refuse_merge_and_keep_the_report_honest(tiny_setup, tmp_path, capsys):
    from tiny_run import QUICK, tiny_overrides

    from minbert.cli import main

    out = tmp_path / "routed"
    sets = [*tiny_overrides(tiny_setup), *QUICK, *ADAPTERS["routed"], "adapter.molora.r=2"]
    assert main(["train", "--out", str(out), *sum((["--set", s] for s in sets), [])]) == 0
    capsys.readouterr()
    assert main(["export", str(out), str(tmp_path / "x"), "--merge"]) == 2
    assert "nothing to merge" in capsys.readouterr().err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    usage = records[-1]["expert_usage"]
    assert set(usage) == {"sst", "quora", "sts"}
    summary = (out / "report" / "summary.md").read_text()
    assert "Expert usage, epoch 2" in summary and "expert-usage.png" in summary
    assert "trained of" in summary and "what changed, on its base" in summary


# -- peft interchange (MiniLM) --------------------------------------------------------------------

peft = pytest.importorskip("peft")


def _minilm_lora(minilm_dir, r=4):
    from minbert.model.adapters import AdapterConfig, AdapterContext
    from minbert.model.adapters.lora import LoRAConfig, install
    from minbert.model.loading import load_pretrained

    encoder, tokenizer = load_pretrained(minilm_dir)
    config = AdapterConfig(kind="lora", lora=LoRAConfig(r=r, alpha=8.0, dropout=0.0))

    class Holder(torch.nn.Module):  # what install reads of a MultiTaskModel
        def __init__(self):
            super().__init__()
            self.encoder, self.heads, self.tasks = encoder, torch.nn.ModuleDict(), []

    holder = Holder()
    install(holder, config, AdapterContext())
    return encoder.eval(), tokenizer, config


def _hf_inputs(tokenizer):
    texts = ["a quiet film about nothing much", "the cat sat on the mat ."]
    rows = [tokenizer.encode(t).input_ids for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    return ids, (ids != 0).long()


def _assert_same_outputs(peft_model, encoder, tokenizer) -> None:
    ids, mask = _hf_inputs(tokenizer)
    with torch.no_grad():
        want = peft_model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = encoder(ids, mask).last_hidden_state
    real = mask.bool()
    assert (got[real] - want[real]).abs().max() <= 1e-4


def test_peft_loads_a_minbert_lora_adapter_with_the_same_outputs(minilm_dir, tmp_path):
    from transformers import BertModel as HFBertModel

    from minbert.model.adapters.lora import save_peft

    encoder, tokenizer, config = _minilm_lora(minilm_dir)
    torch.manual_seed(5)
    with torch.no_grad():
        for _, layer in lora_layers(encoder):
            layer.lora_B["default"].weight.normal_(std=0.05)
    save_peft(encoder, tmp_path / "adapter", "default", config.lora, str(minilm_dir))
    hf = HFBertModel.from_pretrained(minilm_dir, add_pooling_layer=True).eval()
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    _assert_same_outputs(peft_model, encoder, tokenizer)


def test_minbert_loads_an_adapter_peft_created(minilm_dir, tmp_path):
    from transformers import BertModel as HFBertModel

    from minbert.model.adapters.lora import ALL_TARGETS, load_peft

    hf = HFBertModel.from_pretrained(minilm_dir).eval()

    def made_by_peft(targets, name):
        config = peft.LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, init_lora_weights=False
        )  # init_lora_weights=False: a random B, so the adapter acts
        model = peft.get_peft_model(copy.deepcopy(hf), config).eval()
        model.save_pretrained(tmp_path / name)
        return model

    # peft's 'dense' also adapts the pooler, which minbert's LoRA leaves alone
    made_by_peft(["query", "key", "value", "dense"], "with-pooler")
    encoder, tokenizer, _ = _minilm_lora(minilm_dir)
    with pytest.raises(ConfigError, match="its layers are not this model's LoRA layers"):
        load_peft(encoder, tmp_path / "with-pooler", "default")
    peft_model = made_by_peft(ALL_TARGETS, "standard")
    load_peft(encoder, tmp_path / "standard", "default")
    _assert_same_outputs(peft_model, encoder, tokenizer)


def test_a_peft_adapter_of_another_rank_or_model_is_refused_naming_the_file(minilm_dir, tmp_path):
    from transformers import BertModel as HFBertModel

    from minbert.model.adapters.lora import ALL_TARGETS, load_peft

    hf = HFBertModel.from_pretrained(minilm_dir).eval()
    for r, name in ((8, "rank8"), (4, "rank4")):
        config = peft.LoraConfig(r=r, lora_alpha=8, target_modules=list(ALL_TARGETS))
        peft.get_peft_model(copy.deepcopy(hf), config).save_pretrained(tmp_path / name)
    encoder, _, _ = _minilm_lora(minilm_dir)
    with pytest.raises(ConfigError, match=r"rank8/adapter_config.json: r is 8; .* needs 4"):
        load_peft(encoder, tmp_path / "rank8", "default")
    # the same layer names on a narrower model: the shapes are named
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "rank4" / "adapter_model.safetensors")
    save_file(
        {k: v[:, :16].contiguous() if "lora_A" in k else v for k, v in state.items()},
        tmp_path / "rank4" / "adapter_model.safetensors",
    )
    with pytest.raises(ConfigError, match=r"has shape \(4, 16\); this model expects \(4, 384\)"):
        load_peft(encoder, tmp_path / "rank4", "default")


def test_resume_of_a_routed_run_is_exact_with_its_expert_usage(tiny_setup, tmp_path):
    from safetensors.torch import load_file
    from tiny_run import QUICK, run_config, stop_after_step_then_resume

    from minbert.train.trainer import Trainer

    settings = [*QUICK, "train.checkpoint_every=1", "adapter.kind=molora"]
    settings += ["adapter.molora.router=token", "adapter.molora.r=2", "train.lr=1e-2"]
    config = run_config(tiny_setup, *settings)
    whole = Trainer(config, tmp_path / "whole").run()
    resumed = stop_after_step_then_resume(config, tmp_path / "resumed", 3)  # mid-epoch
    assert resumed["dev"] == whole["dev"]
    a = load_file(tmp_path / "whole" / "best" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "best" / "model.safetensors")
    assert any(".lora_router." in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)

    def usage(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [r["expert_usage"] for r in map(json.loads, lines) if "expert_usage" in r]

    assert len(usage("whole")) == 2 and usage("resumed") == usage("whole")


def test_the_base_fingerprint_does_not_change_when_the_model_is_cast():
    # a float64 run of a float32 base (the distributed tests train so) names the same base
    from minbert.run.model_dir import fingerprint

    state = {"encoder.embeddings.word_embeddings.weight": torch.randn(5, 3)}
    doubled = {k: v.double() for k, v in state.items()}
    assert fingerprint(doubled) == fingerprint(state)
    changed = {k: v + 1e-3 for k, v in state.items()}
    assert fingerprint(changed) != fingerprint(state)


def test_a_run_fingerprinted_as_before_still_loads(lora_run, tmp_path):
    # runs before the float32 fingerprint hashed the tensors as they were, dtype included
    import shutil

    from minbert.run.manifest import write_manifest
    from minbert.run.model_dir import fingerprint, load_model_dir

    copy_dir = tmp_path / "run"
    shutil.copytree(lora_run, copy_dir)
    model, _, _ = load_model_dir(copy_dir)
    meta_file = copy_dir / "best" / "meta.json"
    meta = json.loads(meta_file.read_text())
    assert meta["base"]["fingerprint"] == fingerprint(model.state_dict())
    meta["base"]["fingerprint"] = fingerprint(model.state_dict(), as_saved=True)
    meta_file.write_text(json.dumps(meta))
    write_manifest(copy_dir / "best")
    rebuilt, _, _ = load_model_dir(copy_dir)
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in model.state_dict().items())
