import pytest

from minbert.config import ConfigError, config_from_dict, load_config, parse_override


def test_defaults_are_valid():
    config = load_config()
    assert config.model.name == "minilm-l6"
    assert config.train.tasks == ["sst"]
    assert set(config.heads) >= {"sst", "quora", "sts", "cfimdb"}


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        '[train]\nlr = 1e-4\nepochs = 2\n[heads.sts]\nencoding = "bi"\nkind = "cosine"\n'
    )
    config = load_config(path, ["train.lr=3e-5", "model.mode=frozen", "train.tasks=['sst', 'sts']"])
    assert config.train.lr == 3e-5 and config.train.epochs == 2
    assert config.model.mode == "frozen"
    assert config.train.tasks == ["sst", "sts"]
    assert config.head("sts").kind == "cosine" and config.head("sts").pooling == "cls"


def test_resolved_config_round_trips(tmp_path):
    config = load_config(None, ["train.task_weights={sst = 2.0}", "train.tasks=['sst','quora']"])
    path = tmp_path / "resolved.toml"
    path.write_text(config.to_toml())
    assert load_config(path) == config


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.lrr=1", r"unknown key 'train.lrr'.*'lr'"),
        ("optim.lr=1", r"unknown key 'optim'"),
        ("train.lr=-1", r"train.lr: -1.0 is below the minimum 0.0"),
        ("train.epochs=1.5", r"train.epochs: expected an integer"),
        ("train.epochs=true", r"train.epochs: expected an integer"),
        (
            "train.schedule=zigzag",
            r"train.schedule: 'zigzag' is not allowed; choose one of \['sequential'",
        ),
        ("model.attention=flash", r"model.attention: 'flash'.*'sdpa', 'manual'"),
        ("train.tasks=['sst','mnli']", r"unknown task 'mnli'"),
        ("train.tasks=[]", r"train.tasks is empty and no pre-training objective"),
        ("heads.sst.kind=cosine", r"heads.sst.kind: 'cosine' needs a bi-encoded pair task"),
        ("heads.mnli.kind=linear", r"heads.mnli: unknown task"),
        ("train.task_weights={sts=2.0}", r"train.task_weights.sts: not one of train.tasks"),
        ("data.max_length=4096", r"data.max_length: 4096 is above the maximum 512"),
        ("train.lr", r"expected key=value"),
        ("train.progress=maybe", r"train.progress: expected true or false"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr = 1")
    with pytest.raises(ConfigError, match=r"bad.toml: invalid TOML"):
        load_config(bad)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(latin)


def test_override_values_are_toml_or_bare_strings():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a.b=3e-5") == (["a", "b"], 3e-5)
    assert parse_override("a=sdpa") == (["a"], "sdpa")
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])


def test_shipped_configs_are_valid():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.toml"))
    assert configs
    for path in configs:
        load_config(path)


def test_config_from_dict_rejects_non_table():
    with pytest.raises(ConfigError, match="train: expected a table"):
        config_from_dict({"train": 3})


def test_a_config_extends_another_and_names_a_missing_or_cyclic_parent(tmp_path):
    from minbert.config import ConfigError, load_config

    (tmp_path / "base.toml").write_text('[train]\ntasks = ["sst"]\nlr = 1e-4\nepochs = 2\n')
    (tmp_path / "child.toml").write_text('extends = "base.toml"\n[train]\nlr = 3e-4\n')
    config = load_config(tmp_path / "child.toml")
    assert (config.train.tasks, config.train.lr, config.train.epochs) == (["sst"], 3e-4, 2)
    (tmp_path / "orphan.toml").write_text('extends = "gone.toml"\n')
    with pytest.raises(ConfigError, match=r"gone.toml \(extended by .*orphan.toml\)"):
        load_config(tmp_path / "orphan.toml")
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(ConfigError, match="a cycle"):
        load_config(tmp_path / "a.toml")


@pytest.mark.parametrize("name", ["lora", "molora", "pals"])
def test_the_adapter_configs_are_the_main_job_with_one_adapter(name):
    from minbert.config import load_config

    main, adapted = load_config("configs/default.toml"), load_config(f"configs/{name}.toml")
    assert adapted.adapter.kind == name
    differ = {k for k, v in adapted.to_dict().items() if main.to_dict().get(k) != v}
    assert differ == {"adapter"}
    assert set(adapted.to_dict()["adapter"]) == {"kind", "train_base", "lr", name}
