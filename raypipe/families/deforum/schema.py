"""The `deforum` row: a Deforum settings object and/or file, resolved and checked at validation."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, PrivateAttr, model_validator

from raypipe.schema import RowBase


class DeforumRow(RowBase):
    """Deforum: `deforum` (a settings object with Deforum's own key names) and/or
    `deforum_settings` (the URI of a Deforum settings file), resolved and checked here by
    raypipe/families/deforum/settings.py. The effective frame count, size, steps, seed, fps and
    prompts are written back into the common fields, so the metadata shows what ran."""

    kind: Literal["deforum"]
    deforum: dict[str, Any] = Field(default_factory=dict)
    deforum_settings: str | None = None
    # Video Input and hybrid video: the input video (any fsspec URI); else the settings' video_init_path.
    video: str | None = None
    _settings: Any = PrivateAttr(default=None)

    @property
    def mode(self) -> str:
        return self._settings.mode if self._settings is not None else ""

    @property
    def settings(self):
        """The resolved raypipe.families.deforum.settings.DeforumSettings."""
        return self._settings

    @model_validator(mode="after")
    def _resolve_deforum(self):
        from raypipe.families.deforum.settings import resolve

        if self.lora:
            raise ValueError("lora: not supported by kind deforum")
        common = {
            name: getattr(self, name)
            for name in (
                "prompt",
                "negative_prompt",
                "num_frames",
                "height",
                "width",
                "num_inference_steps",
                "guidance_scale",
                "fps",
                "video",
            )
        }
        try:
            settings = resolve(self.deforum, self.deforum_settings, common, self.seed)
        except ValueError:
            raise
        except Exception as err:  # noqa: BLE001 - anything unexpected still rejects just this row
            raise ValueError(f"deforum: {type(err).__name__}: {err}") from None
        self._settings = settings
        self.num_frames, self.height, self.width = settings["max_frames"], settings["H"], settings["W"]
        self.num_inference_steps, self.fps, self.seed = settings["steps"], settings["fps"], settings.seed
        cfg = settings.value_at("cfg_scale_schedule", 0)
        if 0.0 <= cfg <= 100.0:
            self.guidance_scale = cfg
        # Prompts from the settings (file or object) go into the metadata's prompt columns.
        if settings.sources["prompts"] in ("deforum", "deforum_settings"):
            self.prompt = json.dumps(settings["prompts"], ensure_ascii=False)
        if settings.sources["negative_prompts"] in ("deforum", "deforum_settings"):
            self.negative_prompt = settings["negative_prompts"]
        return self
