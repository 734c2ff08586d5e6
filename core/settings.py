"""All runtime settings, read once from the environment (prefix ``SKIPSTEP_``)."""

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SKIPSTEP_", env_file=".env", extra="ignore")

    model: str = Field(
        default="wan-tiny",
        description="A preset name (wan-tiny, ltx-tiny) or a local diffusers-format model directory.",
    )
    home: Path = Field(
        default=Path.home() / ".cache" / "skipstep",
        description="Where built presets and calibration profiles are kept.",
    )
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N.")

    @property
    def presets_dir(self) -> Path:
        return self.home / "models"

    @property
    def profiles_dir(self) -> Path:
        return self.home / "profiles"


@lru_cache
def get_settings() -> Settings:
    return Settings()
