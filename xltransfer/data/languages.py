"""Language sets: the 50 XTREME-R languages, each target's official languages, and the
default low- and high-resource sets of the study (docs/tasks.md explains how they were chosen).
"""
from xltransfer.errors import ConfigError

XTREME_R_LANGUAGES = tuple(
    "af ar az bg bn de el en es et eu fa fi fr gu he hi ht hu id it ja jv ka kk ko lt ml mr ms "
    "my nl pa pl pt qu ro ru sw ta te th tl tr uk ur vi wo yo zh".split())

# Official evaluation languages per XTREME-R target, as in DESIGN.md.
TARGET_LANGUAGES = {
    "xnli": tuple("ar bg de el en es fr hi ru sw th tr ur vi zh".split()),
    "xcopa": tuple("et ht id it qu sw ta th tr vi zh".split()),
    "udpos": tuple(
        "af ar bg de el en es et eu fa fi fr he hi hu id it ja kk ko mr nl pt ru ta te th tl tr "
        "ur vi yo zh lt pl uk wo ro".split()),
    "panx": tuple(l for l in XTREME_R_LANGUAGES if l not in ("ht", "wo")),
    "xquad": tuple("en es de el ru tr ar vi th zh hi ro".split()),
    "mlqa": tuple("en es de ar hi vi zh".split()),
    "tydiqa": tuple("en ar bn fi id ko ru sw te".split()),
    # Tatoeba pairs every language but English with English: XTREME's 36 plus az lt pl uk ro
    # (XTREME-R's evaluate.py XTREME_R_TASK2LANGS and utils_preprocess.py's Tatoeba table).
    "tatoeba": tuple(
        "af ar bg bn de el es et eu fa fi fr he hi hu id it ja jv ka kk ko lt ml mr nl pt ru sw "
        "ta te th tl tr ur vi zh az pl ro uk".split()),
    "mewslix": tuple("ar de en es fa ja pl ro ta tr uk".split()),
    "lareqa": tuple("ar de el en es hi ru th tr vi zh".split()),
}

# Low-resource: XTREME-R languages with the smallest shares of mC4 in the mT5 paper's language
# table that still have both a c4/multilingual split and a Wikipedia edition (qu and wo have no
# mC4 split), spread over eight scripts. docs/tasks.md gives the full rationale.
LOW_RESOURCE_LANGUAGES = ("af", "eu", "gu", "ht", "jv", "ka", "kk", "my", "pa", "sw", "te", "yo")
# High-resource contrast set: the largest mC4 languages among XTREME-R's, English excluded.
HIGH_RESOURCE_LANGUAGES = ("de", "es", "fr", "ja", "pt", "ru", "zh", "it")


# c4/multilingual names a few languages by older or different codes.
MC4_LANGUAGE_CODES = {"he": "iw", "tl": "fil"}


def check_language(lang: str, valid, what: str) -> str:
  """Returns lang if it is in valid, else raises ConfigError naming the valid codes."""
  if lang not in valid:
    raise ConfigError(
        f"unknown language {lang!r} for {what}; valid codes: {' '.join(sorted(valid))}")
  return lang
