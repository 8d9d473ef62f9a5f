"""Settings: one typed object, and a bad value names its variable."""

from pathlib import Path

import pytest

from ops.settings import Settings, SettingsError, load_settings


def test_defaults_are_the_embedded_deployment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """With no BEMQ_* set, broker, store and blobs all live under BEMQ_HOME."""
    monkeypatch.setenv("BEMQ_HOME", str(tmp_path))
    s = load_settings()
    assert s.broker_url == "filesystem://"
    assert s.store_url == f"sqlite:///{tmp_path.resolve()}/bemq.sqlite3"
    assert s.blobs_url == f"file://{tmp_path.resolve()}/blobs"


@pytest.mark.parametrize(
    ("name", "value"),
    [("BEMQ_MAX_BATCH_TOKENS", "lots"), ("BEMQ_BROKER_URL", "kafka://x"),
     ("BEMQ_DATABASE_URL", "mysql://x"), ("BEMQ_BLOB_URL", "gs://b"), ("BEMQ_DEVICE", "tpu"),
     ("BEMQ_CANARY_STEPS", "50,25,100"), ("BEMQ_CANARY_STEPS", "5,25"),
     ("BEMQ_CANARY_SHADOW_FRACTION", "2")],
)
def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, name: str,
                                      value: str) -> None:
    """Each invalid value raises SettingsError whose message starts with the variable name."""
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=f"^{name}: "):
        load_settings()


def test_time_limits_must_be_ordered() -> None:
    """The soft time limit has to fire before the hard one."""
    with pytest.raises(ValueError, match="BEMQ_TASK_SOFT_TIME_LIMIT"):
        Settings(task_soft_time_limit=900, task_time_limit=600)


def test_a_claim_fits_the_pipeline() -> None:
    """A dispatch message may not claim more micro-batches than the forward queue holds."""
    with pytest.raises(ValueError, match=r"BEMQ_CLAIM_SIZE \(4\) must not exceed "
                                         r"BEMQ_PIPELINE_DEPTH \(2\)"):
        Settings(claim_size=4, pipeline_depth=2)
    assert Settings(claim_size=4, pipeline_depth=8).claim_size == 4


def test_no_setting_leaves_a_canary_without_a_comparing_gate() -> None:
    """Probes and shadows off together would judge a canary by errors alone."""
    with pytest.raises(ValueError, match="BEMQ_CANARY_PROBE_ROWS=0 with "
                                         "BEMQ_CANARY_SHADOW_FRACTION=0"):
        Settings(canary_probe_rows=0, canary_shadow_fraction=0)
    Settings(canary_probe_rows=0)  # either alone is fine: that gate is skipped
    Settings(canary_shadow_fraction=0)


def test_a_variable_no_longer_read_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BEMQ_DRIFT_EMBEDDINGS_PER_BATCH", "4")
    with pytest.raises(SettingsError, match=r"^BEMQ_DRIFT_EMBEDDINGS_PER_BATCH: no longer read; "
                                            r"set BEMQ_DRIFT_EMBEDDING_RATE"):
        load_settings()


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    missing = [f"BEMQ_{name.upper()}" for name in Settings.model_fields
               if f"| `BEMQ_{name.upper()}` |" not in readme]
    assert not missing
