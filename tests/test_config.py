"""Settings come from the environment (and .env), typed and validated, with documented defaults."""

import pytest

from loupe.settings import DEFAULT_MODEL_ID, Settings, documented_settings


def test_defaults():
    settings = Settings.from_mapping({})
    assert settings.model_id == DEFAULT_MODEL_ID
    assert (settings.dtype, settings.device, settings.image_max_edge) == ("float32", "cpu", 768)
    assert settings.max_image_bytes == 10 * 1024 * 1024
    assert (settings.host, settings.port, settings.allow_remote_images) == ("0.0.0.0", 8000, False)


def test_values_are_converted_to_their_types():
    settings = Settings.from_mapping(
        {"PORT": "9000", "ALLOW_REMOTE_IMAGES": "yes", "REMOTE_IMAGE_TIMEOUT": "2.5", "DTYPE": "bfloat16"}
    )
    assert (settings.port, settings.allow_remote_images, settings.remote_image_timeout) == (9000, True, 2.5)
    assert settings.dtype == "bfloat16"


@pytest.mark.parametrize(
    "env, words",
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"ALLOW_REMOTE_IMAGES": "perhaps"}, "ALLOW_REMOTE_IMAGES"),
        ({"DTYPE": "float16"}, "DTYPE"),
        ({"MAX_NEW_TOKENS": "4096"}, "MAX_NEW_TOKENS"),
        ({"IMAGE_MAX_EDGE": "16"}, "IMAGE_MAX_EDGE"),
        ({"QUEUE_SIZE": "-1"}, "QUEUE_SIZE"),
        ({"HISTORY_MAX_DAYS": "-1"}, "HISTORY_MAX_DAYS"),
        ({"HISTORY": "sometimes"}, "HISTORY"),
    ],
)
def test_bad_values_name_the_variable(env, words):
    with pytest.raises(ValueError, match=words):
        Settings.from_mapping(env)


def test_env_file_is_read_and_the_environment_wins(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("PORT=9100\nIMAGE_MAX_EDGE=512\n")
    settings = Settings.from_env({"PORT": "9200"}, env_file=env_file)
    assert (settings.port, settings.image_max_edge) == (9200, 512)


def test_every_setting_is_documented_in_the_readme(readme_text):
    for name, _default, help_text in documented_settings():
        assert help_text
        assert f"`{name}`" in readme_text, f"{name} is missing from the README's configuration table"


def test_history_settings(tmp_path):
    settings = Settings.from_mapping({"DATA_DIR": str(tmp_path), "HISTORY": "off", "HISTORY_MAX_RECORDS": "5"})
    assert (settings.history, settings.history_max_records, settings.history_max_days) == (False, 5, 0)
    assert settings.history_database_url == f"sqlite:///{tmp_path / 'history.db'}"
    assert Settings.from_mapping({"DATABASE_URL": "postgresql://db/loupe"}).history_database_url == (
        "postgresql://db/loupe"
    )


def test_trusted_proxies_is_a_count():
    assert Settings.from_mapping({"TRUSTED_PROXIES": "1"}).trusted_proxies == 1
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        Settings.from_mapping({"TRUSTED_PROXIES": "-1"})
