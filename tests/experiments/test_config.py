import pytest

from experiments.config import CONFIG_DIR, ConfigError, load_config, resolve_config_path, to_yaml


def test_schema_defaults_are_the_paper_weights():
    cfg = load_config()
    assert (cfg.loss.photometric, cfg.loss.landmark, cfg.loss.perceptual) == (1.92, 1.6e-3, 0.2)
    assert (cfg.loss.regularization, cfg.loss.texture) == (3e-4, 1.0)
    assert (cfg.loss.reg_id, cfg.loss.reg_exp, cfg.loss.reg_tex) == (1.0, 0.8, 1.7e-3)
    assert cfg.optim.lr == 1e-4 and cfg.data.batch_size == 32


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("ablations/*.yaml")), ids=lambda p: p.stem)
def test_every_ablation_changes_the_paper_recipe_and_loads_on_the_default(path):
    root = ["data.prepared.root=/data/prepared"]
    base = load_config(["paper_ict"], root)
    cfg = load_config(["paper_ict", path], root)
    assert cfg != base, "an ablation must change something"
    assert cfg.name == base.name
    load_config(["default", path])


def test_paper_configs_load_with_their_required_paths(tmp_path):
    cfg = load_config(["paper_ict"], ["data.prepared.root=/data/prepared"])
    assert cfg.network.backbone == "resnet50" and cfg.data.batch_size == 32 and cfg.renderer.image_size == 224
    bfm = load_config(["paper_ict", "paper_bfm"], ["data.prepared.root=/d", "face_model.path=/m/BFM_model_front.mat"])
    assert bfm.face_model.name == "bfm" and bfm.loss.recognition_net == "arcface_r50"
    with pytest.raises(ConfigError, match="face_model.path"):
        load_config(["paper_ict", "paper_bfm"], ["data.prepared.root=/d"])
    with pytest.raises(ConfigError, match="data.prepared.root"):
        load_config(["paper_ict"])


def test_unknown_key_in_file_names_key_file_and_suggestion(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("loss:\n  photometrik: 1.0\n")
    with pytest.raises(ConfigError) as err:
        load_config([bad])
    message = str(err.value)
    assert "loss.photometrik" in message and str(bad) in message and "loss.photometric" in message


def test_unknown_override_and_wrong_type():
    with pytest.raises(ConfigError, match="trainer.max_epoch'.*trainer.max_epochs"):
        load_config(overrides=["trainer.max_epoch=3"])
    with pytest.raises(ConfigError, match="trainer.max_epochs"):
        load_config(overrides=["trainer.max_epochs=many"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["trainer.max_epochs"])
    with pytest.raises(ConfigError, match="renderer.backend"):
        load_config(overrides=["renderer.backend=opengl"])


def test_overrides_apply_last_and_round_trip_through_yaml():
    cfg = load_config(["default"], ["trainer.max_epochs=2", "loss.perceptual=0"])
    assert cfg.trainer.max_epochs == 2 and cfg.loss.perceptual == 0
    assert load_config(base_yaml=to_yaml(cfg)) == cfg


def test_missing_config_lists_the_known_ones():
    with pytest.raises(FileNotFoundError, match="no_perceptual"):
        resolve_config_path("nonexistent")


def test_the_default_is_bounded_by_steps_with_a_step_schedule_and_no_wall_clock_limit():
    cfg = load_config(["default"])
    assert cfg.trainer.max_steps > 0 and cfg.trainer.max_epochs == -1 and cfg.trainer.max_time_minutes is None
    assert 0 < cfg.optim.lr_step_steps < cfg.trainer.max_steps
    steps_per_epoch = cfg.data.synthetic.n_train // cfg.data.batch_size
    assert cfg.trainer.max_steps % steps_per_epoch == 0, "the last steps would not be validated"
    shipped = load_config(["shipped"])
    assert shipped.trainer.max_steps > cfg.trainer.max_steps and shipped.trainer.max_time_minutes is None
    assert shipped.trainer.max_steps % (shipped.data.synthetic.n_train // shipped.data.batch_size) == 0


def test_a_run_without_an_end_and_contradicting_starts_are_refused():
    with pytest.raises(ConfigError, match="set trainer.max_steps"):
        load_config(overrides=["trainer.max_steps=-1", "trainer.max_epochs=-1"])
    with pytest.raises(ConfigError, match="optim.lr_step_steps"):
        load_config(overrides=["optim.lr_step_steps=0"])
    with pytest.raises(ConfigError, match="network.init and network.deep3d_checkpoint"):
        load_config(overrides=["network.init=bundled", "network.deep3d_checkpoint=x.pth"])
