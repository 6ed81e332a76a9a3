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


def test_schema_sections_are_the_components_settings_with_their_defaults():
    """The schema embeds each component's settings dataclass, so its defaults are the component's own."""
    from datamodules.image_sets import ImageSetSettings
    from datamodules.prepared import PreparedDataSettings
    from datamodules.synthetic import SyntheticFaceSettings
    from lightning_modules.rnet_module import OptimSettings
    from losses.hybrid import LossWeights

    cfg = load_config()
    assert cfg.data.synthetic == SyntheticFaceSettings() and type(cfg.data.synthetic) is SyntheticFaceSettings
    assert cfg.data.prepared == PreparedDataSettings() and type(cfg.data.prepared) is PreparedDataSettings
    assert cfg.data.sets == ImageSetSettings() and type(cfg.data.sets) is ImageSetSettings
    assert cfg.optim == OptimSettings() and type(cfg.optim) is OptimSettings
    assert cfg.loss.weights() == LossWeights()
    # The values `make train-single` has always run with (the DataModule's own defaults used to differ).
    synthetic = cfg.data.synthetic
    assert (synthetic.occluder_probability, synthetic.landmark_noise_px, synthetic.n_train) == (0.3, 1.5, 4000)


def test_every_loss_weight_reaches_the_loss():
    """No key is dropped between the config and `LossWeights`: each weight set in the config is the loss's."""
    import dataclasses

    from losses.hybrid import LossWeights

    names = [f.name for f in dataclasses.fields(LossWeights)]
    cfg = load_config(overrides=[f"loss.{name}={k + 1}.5" for k, name in enumerate(names)])
    assert dataclasses.asdict(cfg.loss.weights()) == {name: k + 1.5 for k, name in enumerate(names)}


def test_a_value_a_settings_class_refuses_names_its_section():
    with pytest.raises(ConfigError, match="'data.synthetic'.*occluder_probability"):
        load_config(overrides=["data.synthetic.occluder_probability=1.5"])
    with pytest.raises(ConfigError, match="'loss'.*photometric"):
        load_config(overrides=["loss.photometric=-1"])
    with pytest.raises(ConfigError, match="'data.sets'.*degradations"):
        load_config(overrides=["data.sets.degradations=[rain]"])
    with pytest.raises(ConfigError, match="data.synthetic.n_trian'.*data.synthetic.n_train"):
        load_config(overrides=["data.synthetic.n_trian=3"])
    with pytest.raises(ConfigError, match="data.num_workers"):
        load_config(overrides=["data.num_workers=-2"])


def test_a_config_stored_before_the_settings_classes_still_loads():
    """Checkpoints store their config as YAML: one written by the old schema (no render_batch_size, appearance,
    augmentation or degradation strengths; degradations a list) loads with the new keys at their defaults."""
    old = (
        "data:\n  num_workers: 4\n  synthetic:\n    n_train: 64\n    occluder_probability: 0.2\n"
        "  prepared:\n    root: null\n    val_fraction: 0.1\n    augment: false\n"
        "  sets:\n    degradations: [blur, noise]\n    min_set_size: null\n"
        "optim:\n  lr: 0.0003\n  lr_step_steps: 2048\n  identity_lr_scale: 3.0\n"
        "loss:\n  perceptual: 0.0\n  skin_attention: false\n"
    )
    cfg = load_config(base_yaml=old)
    assert cfg.data.synthetic.n_train == 64 and cfg.data.synthetic.render_batch_size == 32
    assert cfg.data.sets.degradations == ("blur", "noise") and not cfg.data.prepared.augment
    assert cfg.optim.lr_step_steps == 2048 and cfg.loss.perceptual == 0.0 and not cfg.loss.skin_attention
    assert load_config(base_yaml=to_yaml(cfg)) == cfg


def test_nested_settings_are_set_from_the_command_line():
    cfg = load_config(
        ["default"], ["data.synthetic.appearance.look=model", "data.synthetic.appearance.focal_scale=[1,1]"]
    )
    assert cfg.data.synthetic.appearance.look == "model" and cfg.data.synthetic.appearance.focal_scale == (1.0, 1.0)
    with pytest.raises(ConfigError, match="'data.synthetic.appearance'.*unknown look 'cartoon'"):
        load_config(overrides=["data.synthetic.appearance.look=cartoon"])
