"""The two effects models, their 80 scenes, durations and how many photos each scene takes."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Final

from airflow_provider_klingfx.domain.errors import KlingFxInvalidInputError

STANDARD_EFFECTS_MODEL: Final = "klingai/kling-video-v1.6-standard-effects"
PRO_EFFECTS_MODEL: Final = "klingai/kling-video-v1.6-pro-effects"
#: The two effects models. Both accept the same scenes and durations.
MODELS: Final[tuple[str, ...]] = (STANDARD_EFFECTS_MODEL, PRO_EFFECTS_MODEL)

#: The 80 effect scenes of the vendor schema, in the schema's order (same list for both models).
EFFECT_SCENES: Final[tuple[str, ...]] = (
    "magic_fireball", "pet_moto_rider", "media_interview", "pet_lion", "pet_delivery", "pet_chef",
    "santa_gifts", "santa_hug", "girlfriend", "boyfriend", "heart_gesture_1", "pet_wizard",
    "smoke_smoke", "thumbs_up", "instant_kid", "dollar_rain", "cry_cry", "building_collapse",
    "gun_shot", "mushroom", "double_gun", "pet_warrior", "lightning_power", "jesus_hug",
    "shark_alert", "long_hair", "lie_flat", "polar_bear_hug", "brown_bear_hug", "jazz_jazz",
    "office_escape_plow", "fly_fly", "watermelon_bomb", "pet_dance", "boss_coming", "wool_curly",
    "iron_warrior", "pet_bee", "marry_me", "swing_swing", "day_to_night", "piggy_morph", "wig_out",
    "car_explosion", "ski_ski", "tiger_hug", "siblings", "construction_worker", "let's_ride",
    "snatched", "magic_broom", "felt_felt", "jumpdrop", "celebration", "splashsplash", "hula",
    "surfsurf", "fairy_wing", "angel_wing", "dark_wing", "skateskate", "plushcut", "jelly_press",
    "jelly_slice", "jelly_squish", "jelly_jiggle", "pixelpixel", "yearbook", "instant_film",
    "anime_figure", "rocketrocket", "bloombloom", "dizzydizzy", "fuzzyfuzzy", "squish", "expansion",
    "hug", "kiss", "heart_gesture", "fight",
)  # fmt: skip

#: Scenes that place two people side by side: exactly two images, the first on the left. Kling's
#: effects spec has only these three as dual-image effects; every other scene takes one photo.
TWO_PERSON_SCENES: Final = frozenset({"hug", "kiss", "heart_gesture"})
#: The single-subject scenes the AI/ML API's page names (every scene outside
#: :data:`TWO_PERSON_SCENES` takes one photo too).
ONE_SUBJECT_SCENES: Final = frozenset({"squish", "expansion"})
#: Allowed video lengths in seconds.
DURATIONS: Final[tuple[int, ...]] = (5, 10)
DEFAULT_DURATION: Final = 5

_SCENE_SET: Final = frozenset(EFFECT_SCENES)


def image_count_range(effect_scene: str) -> tuple[int, int]:
    """Return the (minimum, maximum) number of images a scene takes.

    Kling's effects spec: two photos for the dual-image effects (:data:`TWO_PERSON_SCENES`), one for
    every other scene, including names that sound like two people (``santa_hug``, ``siblings``,
    ``fight``). The AI/ML API's page names the count only for five scenes; Kling's rule is followed.

    :param effect_scene: a name from :data:`EFFECT_SCENES`.
    """
    return (2, 2) if effect_scene in TWO_PERSON_SCENES else (1, 1)


def _suggest(value: str, choices: Iterable[str]) -> list[str]:
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    if value.lower() in lowered:
        return [lowered[value.lower()]]
    return difflib.get_close_matches(value.lower().strip(), choices, n=3, cutoff=0.6)


def validate_effect_scene(effect_scene: object) -> str:
    """Return ``effect_scene`` if it is a known scene, else raise with the closest names.

    :param effect_scene: the scene name to check.
    :raises KlingFxInvalidInputError: when the scene is unknown.
    """
    if not isinstance(effect_scene, str) or not effect_scene:
        raise KlingFxInvalidInputError(f"effect_scene must be a non-empty string, got {effect_scene!r}")
    if effect_scene in _SCENE_SET:
        return effect_scene
    close = _suggest(effect_scene, EFFECT_SCENES)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise KlingFxInvalidInputError(
        f"Unknown effect_scene {effect_scene!r}{hint} (see airflow_provider_klingfx.domain.EFFECT_SCENES "
        f"for all {len(EFFECT_SCENES)})"
    )


def validate_model(model: object) -> str:
    """Return ``model`` if it is one of :data:`MODELS`, else raise with the valid names.

    :param model: the model name to check.
    """
    if isinstance(model, str) and model in MODELS:
        return model
    close = _suggest(str(model), MODELS)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise KlingFxInvalidInputError(f"Unknown model {model!r}{hint} (valid: {', '.join(MODELS)})")


def validate_duration(duration: object) -> int:
    """Return the duration as an int if it is 5 or 10 (ints or their string forms, as templates give).

    :param duration: the requested video length in seconds.
    """
    value: object = duration
    if isinstance(duration, str) and duration.strip().isdigit():
        value = int(duration.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value not in DURATIONS:
        raise KlingFxInvalidInputError(
            f"duration must be one of {', '.join(map(str, DURATIONS))} seconds, got {duration!r}"
        )
    return value
