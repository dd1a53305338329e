"""The run profile resource and the Dagster run config of every stage, generated from its settings class.

Why generated: the run config of a stage must expose every field of its
settings class (``prmforge.profiles.STAGE_SETTINGS``) and nothing else, and a
hand-written copy drifts. :func:`run_config_class` builds a Dagster
``Config`` class with the same fields, each optional with default None
meaning "take the profile's value", and the same descriptions (the
Launchpad's help; a ``Literal`` becomes a string listing its choices).
Nested settings models (``BenchmarkSpec``) become nested ``Config`` classes
with their own defaults. Values are validated by the settings class when the
step builds its settings (``SettingsResource.stage``), so a wrong value fails
the step with pydantic's message naming the field. A consequence: a field
whose meaningful value is None (``max_steps``) cannot be set *to* None from
run config; a profile can.

:func:`resource_fields_from` does the same for resources that configure a
core object (``EngineResource`` from ``EngineConfig``).
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union

from dagster import Config, ConfigurableResource
from pydantic import BaseModel, Field, create_model
from pydantic.fields import FieldInfo

from prmforge.config import StageSettings
from prmforge.profiles import STAGE_SETTINGS, active_profile, stage_settings

_NESTED: dict[type[BaseModel], type[Config]] = {}


def _config_type(annotation: Any) -> Any:
    """``annotation`` with every pydantic model in it replaced by its generated ``Config`` class."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _nested_config(annotation)
    origin = typing.get_origin(annotation)
    if origin is Literal:  # Dagster has no optional Literal: a string, checked by the settings class
        return type(typing.get_args(annotation)[0])
    if origin is None:
        return annotation
    args = tuple(_config_type(a) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return Union[args]  # noqa: UP007 - built from a tuple
    return origin[args if len(args) > 1 else args[0]]


def _description(f: FieldInfo) -> str | None:
    """The field's description, plus its choices when it is a Literal (the run config shows a string)."""
    choices = [typing.get_args(a) for a in (f.annotation, *typing.get_args(f.annotation))
               if typing.get_origin(a) is Literal]
    if not choices:
        return f.description
    return f"{f.description} (one of: {', '.join(map(str, choices[0]))})"


def _nested_config(model: type[BaseModel]) -> type[Config]:
    """A ``Config`` class with ``model``'s fields, types and defaults (for items of a list field)."""
    if model not in _NESTED:
        fields: dict[str, Any] = {}
        for name, f in model.model_fields.items():
            kwargs: dict[str, Any] = {"description": _description(f)}
            if not f.is_required():
                kwargs["default"] = f.get_default(call_default_factory=True)
            fields[name] = (_config_type(f.annotation), Field(**kwargs))
        _NESTED[model] = create_model(f"{model.__name__}Config", __base__=Config, __doc__=model.__doc__,
                                      __module__=__name__, **fields)
    return _NESTED[model]


def run_config_class(settings_cls: type[StageSettings], name: str,
                     extra: dict[str, tuple[Any, FieldInfo]] | None = None) -> type[Config]:
    """A Dagster ``Config`` class exposing every field of ``settings_cls`` as an optional override.

    ``extra`` adds run-only fields that are not settings (e.g. ``force_retrain``);
    :meth:`SettingsResource.stage` leaves them out of the settings.
    """
    fields: dict[str, Any] = {}
    for field_name, f in settings_cls.model_fields.items():
        annotation = _config_type(f.annotation)
        fields[field_name] = (annotation | None, Field(None, description=_description(f)))
    fields.update(extra or {})
    doc = (f"Run-config overrides of ``{settings_cls.__name__}`` (None = the profile's value). "
           f"{settings_cls.__doc__ or ''}")
    return create_model(name, __base__=Config, __doc__=doc, __module__=__name__, **fields)


class SettingsResource(ConfigurableResource):
    """Which profile sizes the stages; ``PRMFORGE_PROFILE`` sets the default."""

    profile: str = Field(default_factory=active_profile)

    def stage(self, stage: str, config: Config | None = None, **overrides: Any) -> Any:
        """The settings of ``stage`` (an asset name): class defaults < profile < run config < overrides.

        Run-config fields that are not settings fields (run-only switches) are ignored here.
        """
        values: dict[str, Any] = {}
        if config is not None:
            known = STAGE_SETTINGS[stage].model_fields
            values = {k: v for k, v in config.model_dump().items() if k in known}
        values.update(overrides)
        return stage_settings(stage, self.profile, **values)


def resource_fields_from(model: type[BaseModel], name: str, doc: str,
                         overrides: dict[str, tuple[Any, FieldInfo]] | None = None) -> type[ConfigurableResource]:
    """A ``ConfigurableResource`` base class with ``model``'s fields (types, defaults, descriptions).

    Why: a resource that configures a core object (``EngineConfig``) must offer
    every field of it with the same defaults; generating the fields keeps them
    from drifting. ``overrides`` replaces single fields (a different default or
    description). Subclass the result to add the resource's methods.
    """
    fields: dict[str, Any] = {}
    for field_name, f in model.model_fields.items():
        fields[field_name] = (f.annotation, Field(f.get_default(call_default_factory=True),
                                                  description=f.description))
    fields.update(overrides or {})
    return create_model(name, __base__=ConfigurableResource, __doc__=doc, __module__=__name__, **fields)


def stage_config(stage: str, extra: dict[str, tuple[Any, FieldInfo]] | None = None) -> type[Config]:
    """The run-config class of ``stage`` (an asset name), e.g. ``mc_step_labels`` -> ``McStepLabelsConfig``."""
    name = "".join(part.capitalize() for part in stage.split("_")) + "Config"
    return run_config_class(STAGE_SETTINGS[stage], name, extra)
