"""Short model names (``"des4-voc-aug"``) → Hub repo ids; clear errors when such a model cannot be fetched.

This module is the lowest layer of the Hub code: it imports nothing from the package, so that
``Des4ForSemanticSegmentation.from_pretrained`` can use it without an import cycle::

    pretrained_model_name_or_path = resolve_pretrained_name(pretrained_model_name_or_path)
    with explain_hub_errors(pretrained_model_name_or_path, revision=kwargs.get("revision")):
        ...  # the normal loading

The namespace the short names live in is ``des4-hf`` unless the environment variable
``DES4_HUB_NAMESPACE`` names another user or organisation (e.g. your own copies).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

NAMESPACE_ENV = "DES4_HUB_NAMESPACE"
DEFAULT_HUB_NAMESPACE = "des4-hf"


@dataclass(frozen=True)
class ShortName:
    """One published DeS4 model: its short name, what it was trained on and the recipe that trains it."""

    name: str
    dataset: str
    recipe: str  # a file under configs/, without the .yaml suffix

    @property
    def train_command(self) -> str:
        return f"accelerate launch scripts/train.py --config configs/{self.recipe}.yaml"


SHORT_NAMES: dict[str, ShortName] = {
    item.name: item
    for item in (
        ShortName("des4-voc-aug", "PASCAL VOC 2012 + SBD ('blended' split, 1,323 labeled images)",
                  "voc_blended_1323"),
        ShortName("des4-voc", "PASCAL VOC 2012 ('classic' split, 1,464 labeled images)", "voc_classic_1464"),
        ShortName("des4-cityscapes", "Cityscapes (744 labeled images)", "cityscapes_744"),
    )
}


class HubModelNotAvailableError(OSError):
    """A short-named DeS4 model could not be fetched from the Hub (offline, not cached, missing...).

    An ``OSError`` like the errors transformers raises for the same situations, so existing
    ``except OSError`` handlers keep working. The original error is kept in ``hub_error``.
    """

    def __init__(self, message: str, hub_error: BaseException | None = None) -> None:
        super().__init__(message)
        self.hub_error = hub_error


def hub_namespace() -> str:
    """The Hub user/organisation the short names resolve to (``$DES4_HUB_NAMESPACE`` or ``des4-hf``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    namespace = os.environ.get(NAMESPACE_ENV, "").strip() or DEFAULT_HUB_NAMESPACE
    try:
        validate_repo_id(f"{namespace}/des4")  # huggingface_hub's own rules for the namespace part
        if "/" in namespace:
            raise HFValidationError("a namespace holds no '/'")
    except HFValidationError as error:
        raise ValueError(f"{NAMESPACE_ENV}={namespace!r} is not a valid Hub user or organisation name ({error}); "
                         "e.g. DES4_HUB_NAMESPACE=my-user.") from None
    return namespace


def short_name_repo_id(name: str) -> str:
    """``"des4-voc-aug"`` → ``"<namespace>/des4-voc-aug"``; a ValueError listing the known names otherwise."""
    if name not in SHORT_NAMES:
        raise ValueError(f"{name!r} is not a DeS4 short name; known short names: {', '.join(SHORT_NAMES)}.")
    return f"{hub_namespace()}/{name}"


def resolve_pretrained_name(name_or_path: str | os.PathLike[str]) -> str:
    """Turn a short name into its Hub repo id; everything else passes through unchanged.

    An existing local directory always wins (even one called ``des4-voc-aug``), and a full repo id
    (``user/name``) or any other string is returned as given. A path object becomes its string; anything
    else (e.g. ``None``, which transformers accepts with ``config=`` and ``state_dict=``) is returned as is,
    for transformers to judge.
    """
    if isinstance(name_or_path, os.PathLike):
        return os.fspath(name_or_path)
    if not isinstance(name_or_path, str):
        return name_or_path
    if name_or_path in SHORT_NAMES and not os.path.isdir(name_or_path):
        return short_name_repo_id(name_or_path)
    return name_or_path


def _short_name_for(name_or_path: object) -> ShortName | None:
    """The short-name entry that ``name_or_path`` is or resolves to, if any."""
    if not isinstance(name_or_path, str) or os.path.isdir(name_or_path):
        return None
    if name_or_path in SHORT_NAMES:
        return SHORT_NAMES[name_or_path]
    namespace, _, name = name_or_path.partition("/")
    if name in SHORT_NAMES:
        with contextlib.suppress(ValueError):
            if namespace == hub_namespace():
                return SHORT_NAMES[name]
    return None


def _error_chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _classify(error: BaseException) -> tuple[str, BaseException] | None:
    """What went wrong on the way to the Hub: (kind, the error that says so); None if not a Hub problem."""
    from huggingface_hub import errors as hub_errors

    network_types: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
    for module_name in ("httpx2", "httpx", "requests"):  # whichever HTTP client this huggingface_hub uses
        with contextlib.suppress(ImportError, AttributeError):
            module = __import__(module_name)
            network_types += (module.TransportError if module_name != "requests" else module.ConnectionError,)

    for item in _error_chain(error):
        if isinstance(item, hub_errors.OfflineModeIsEnabled | hub_errors.LocalEntryNotFoundError):
            return "offline", item
        if isinstance(item, hub_errors.RevisionNotFoundError):
            return "revision", item
        if isinstance(item, hub_errors.RepositoryNotFoundError):  # also GatedRepoError
            return "repo", item
        if isinstance(item, hub_errors.RemoteEntryNotFoundError):
            return "files", item
        if isinstance(item, network_types):
            return "network", item
        if isinstance(item, hub_errors.HfHubHTTPError):
            return "http", item
    message = str(error)
    if isinstance(error, OSError) and ("couldn't connect" in message or "offline mode" in message):
        return "offline", error
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _explain(short: ShortName, repo_id: str, revision: str | None, kind: str, cause: BaseException) -> str:
    at = f" (revision {revision!r})" if revision else ""
    what = {"offline": "is not in the local Hugging Face cache and Hub access is switched off or unreachable",
            "network": "is not in the local Hugging Face cache and the Hub could not be reached",
            "repo": "was not found on the Hub (it does not exist, is private, or your token cannot read it)",
            "revision": "exists on the Hub but has no such revision",
            "files": "exists on the Hub but holds no complete DeS4 model (config.json / safetensors missing)",
            "http": "could not be downloaded from the Hub"}[kind]
    revision_flag = f" --revision {revision}" if revision else ""
    return (
        f"DeS4 model {short.name!r} = Hub repo {repo_id!r}{at} {what}.\n"
        f"  cause: {_first_line(cause)}\n"
        "How to get it:\n"
        f"  - connect to the Internet once with HF_HUB_OFFLINE=0 (unset it) and load it again, or "
        f"download it ahead of time with `hf download {repo_id}{revision_flag}` (older clients: "
        "`huggingface-cli download "
        f"{repo_id}`); afterwards it loads from the cache even with HF_HUB_OFFLINE=1;\n"
        f"  - if your copy lives in another namespace, set {NAMESPACE_ENV}=<user-or-org> (now "
        f"{hub_namespace()!r}) or pass the full repo id;\n"
        "  - for a private repo, log in with `hf auth login` or set HF_TOKEN.\n"
        f"Or train it yourself on {short.dataset}:\n"
        f"  {short.train_command}\n"
        "  and load the output directory: Des4ForSemanticSegmentation.from_pretrained('<output dir>')."
    )


@contextlib.contextmanager
def explain_hub_errors(name_or_path: str | os.PathLike[str], revision: str | None = None) -> Iterator[None]:
    """Turn a failure to fetch a short-named model into one :class:`HubModelNotAvailableError`.

    ``name_or_path`` is the short name or the repo id it resolved to. Errors about anything else
    (a local directory, another repo id, a checkpoint without prototypes, ...) pass through unchanged.
    The HTTP-layer traceback is not chained (``from None``) so the user sees what to do, not a stack
    trace; the original error stays available as ``error.hub_error``.
    """
    try:
        yield
    except HubModelNotAvailableError:
        raise  # already explained (nested use)
    except Exception as error:
        short = _short_name_for(os.fspath(name_or_path) if isinstance(name_or_path, os.PathLike) else name_or_path)
        classified = _classify(error) if short is not None else None
        if short is None or classified is None:
            raise
        kind, cause = classified
        message = _explain(short, short_name_repo_id(short.name), revision, kind, cause)
        raise HubModelNotAvailableError(message, hub_error=error) from None
