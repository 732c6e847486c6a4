"""Short model names (``"des4-voc-aug"``) → Hub repo ids, and one clear error when such a model cannot be fetched.

The lowest layer of the Hub code (it imports nothing from the package), so that ``from_pretrained`` can use it.
Short names live in the ``des4-hf`` namespace unless ``$DES4_HUB_NAMESPACE`` names another user or organisation.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

NAMESPACE_ENV = "DES4_HUB_NAMESPACE"
DEFAULT_HUB_NAMESPACE = "des4-hf"

#: short name → (what it was trained on, the recipe under configs/ that trains it)
SHORT_NAMES: dict[str, tuple[str, str]] = {
    "des4-voc-aug": ("PASCAL VOC 2012 + SBD ('blended' split, 1,323 labeled images)", "voc_blended_1323"),
    "des4-voc": ("PASCAL VOC 2012 ('classic' split, 1,464 labeled images)", "voc_classic_1464"),
    "des4-cityscapes": ("Cityscapes (744 labeled images)", "cityscapes_744"),
}


class HubModelNotAvailableError(OSError):
    """A short-named model could not be fetched (an ``OSError``, as transformers raises); see ``hub_error``."""

    def __init__(self, message: str, hub_error: BaseException | None = None) -> None:
        super().__init__(message)
        self.hub_error = hub_error


def hub_namespace() -> str:
    """The Hub user/organisation the short names resolve to (``$DES4_HUB_NAMESPACE`` or ``des4-hf``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    namespace = os.environ.get(NAMESPACE_ENV, "").strip() or DEFAULT_HUB_NAMESPACE
    try:
        validate_repo_id(f"{namespace}/des4")
        if "/" in namespace:
            raise HFValidationError("a namespace holds no '/'")
    except HFValidationError as error:
        raise ValueError(f"{NAMESPACE_ENV}={namespace!r} is not a valid Hub user or organisation name ({error}); "
                         "e.g. DES4_HUB_NAMESPACE=my-user.") from None
    return namespace


def resolve_pretrained_name(name_or_path: str | os.PathLike[str]) -> str:
    """A short name → its Hub repo id. Local folders (even one called ``des4-voc``), repo ids and anything else
    pass through (a path object as its string)."""
    if isinstance(name_or_path, os.PathLike):
        return os.fspath(name_or_path)
    if isinstance(name_or_path, str) and name_or_path in SHORT_NAMES and not os.path.isdir(name_or_path):
        return f"{hub_namespace()}/{name_or_path}"
    return name_or_path


def _short_name_for(name_or_path: object) -> str | None:
    """The short name that ``name_or_path`` is, or resolves from, if any."""
    if not isinstance(name_or_path, str) or os.path.isdir(name_or_path):
        return None
    namespace, _, name = name_or_path.rpartition("/")
    if name in SHORT_NAMES and (not namespace or namespace == hub_namespace()):
        return name
    return None


def accept_short_names(auto_class: type) -> None:
    """Let a transformers Auto class's ``from_pretrained`` take the short names too (``pipeline`` loads through
    them), with the same clear error when such a model cannot be fetched. Any other name passes through untouched."""
    original = auto_class.from_pretrained.__func__  # type: ignore[attr-defined]
    if getattr(original, "_des4_short_names", False):
        return

    def from_pretrained(cls: type, name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        if _short_name_for(name_or_path) is None or isinstance(name_or_path, os.PathLike):
            return original(cls, name_or_path, *args, **kwargs)
        name = resolve_pretrained_name(name_or_path)
        with explain_hub_errors(name, kwargs.get("revision")):
            from transformers.utils import cached_file

            # config.json first: some Auto classes re-raise the Hub's error without its cause
            cached_file(name, "config.json", **{key: kwargs[key] for key in ("revision", "cache_dir", "token")
                                                 if key in kwargs})
            return original(cls, name, *args, **kwargs)

    from_pretrained._des4_short_names = True  # type: ignore[attr-defined]
    from_pretrained.__doc__ = original.__doc__
    auto_class.from_pretrained = classmethod(from_pretrained)  # type: ignore[assignment]


_OFFLINE = "is not in the local Hugging Face cache and Hub access is switched off or unreachable"
_UNREACHABLE = "is not in the local Hugging Face cache and the Hub could not be reached"


DEFAULT_HUB_TIMEOUT = 30.0  # seconds; huggingface_hub's shared client waits forever by default


_hub_timeout = [DEFAULT_HUB_TIMEOUT]


def _fill_timeouts(request: Any) -> None:
    """A request hook of huggingface_hub's client: no request waits longer than ours, also one sent with ``None``
    (some calls pass it explicitly, which overrides the client's own timeout), before the transport reads it."""
    given = request.extensions.get("timeout") or {}
    request.extensions["timeout"] = {key: min(given.get(key) or _hub_timeout[0], _hub_timeout[0])
                                     for key in ("connect", "read", "write", "pool")}


def hub_model_problem(repo_id: str) -> str | None:
    """Why Hub model ``repo_id`` cannot be loaded, asked once with the timeout and no retries (transformers' loaders
    retry each file with back-off); None when it can, when it is in the local cache, or when Hub access is off."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE or isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return None
    try:
        HfApi().model_info(repo_id, timeout=_hub_timeout[0])
    except Exception as error:  # noqa: BLE001 - huggingface_hub and httpx raise many types; unknown ones pass
        return hub_error_line(repo_id, error)
    return None


def set_hub_timeout(seconds: float | None = None) -> float:
    """Seconds to connect and for each read or write of every huggingface_hub call (the Auto loaders', des4-predict's,
    the demo's, the push's): ``seconds``, else ``$DES4_HUB_TIMEOUT``, else :data:`DEFAULT_HUB_TIMEOUT`."""
    from huggingface_hub import get_session

    if seconds is None:
        seconds = float(os.environ.get("DES4_HUB_TIMEOUT", DEFAULT_HUB_TIMEOUT))
    if not seconds > 0:
        raise ValueError(f"Hub timeout {seconds}: give a positive number of seconds")
    _hub_timeout[0] = seconds
    client = get_session()
    client.timeout = seconds
    hooks = client.event_hooks
    if _fill_timeouts not in hooks.get("request", []):
        client.event_hooks = {**hooks, "request": [*hooks.get("request", []), _fill_timeouts]}
    return seconds


def is_network_error(error: BaseException) -> bool:
    """A connection or timeout failure of the standard library or any HTTP client (httpx, httpx2, requests)."""
    return any(cls.__name__ in ("TransportError", "ConnectionError", "TimeoutError") for cls in type(error).__mro__)


def _hub_problem(error: BaseException) -> tuple[str, BaseException] | None:
    """(what went wrong on the way to the Hub, the error that says so), searching the chain; None otherwise."""
    from huggingface_hub import errors

    kinds = ((errors.OfflineModeIsEnabled | errors.LocalEntryNotFoundError, _OFFLINE),
             (errors.RevisionNotFoundError, "exists on the Hub but has no such revision"),
             (errors.RepositoryNotFoundError, "was not found on the Hub (it does not exist, is private, or your "
              "token cannot read it)"),
             (errors.RemoteEntryNotFoundError, "exists on the Hub but holds no complete DeS4 model"),
             (errors.HfHubHTTPError, "could not be downloaded from the Hub"))
    seen, item = set(), error
    while item is not None and id(item) not in seen:
        seen.add(id(item))
        for kind, what in kinds:
            if isinstance(item, kind):
                return what, item
        if is_network_error(item):
            return _UNREACHABLE, item
        item = item.__cause__ or item.__context__
    if isinstance(error, OSError) and ("couldn't connect" in str(error) or "offline mode" in str(error)):
        return _OFFLINE, error
    return None


def hub_error_line(name: str, error: BaseException) -> str | None:
    """One line for a failed Hub load of ``name`` (not found, unreachable, offline...), or None when ``error`` is no
    Hub failure."""
    problem = _hub_problem(error)
    return None if problem is None else f"{name} {problem[0]}"


@contextlib.contextmanager
def explain_hub_errors(name_or_path: str | os.PathLike[str], revision: str | None = None) -> Iterator[None]:
    """Turn a failure to fetch a short-named model into one :class:`HubModelNotAvailableError` saying how to get
    it (download, namespace, login, or the recipe that trains it). Other errors pass through unchanged."""
    try:
        yield
    except HubModelNotAvailableError:
        raise
    except Exception as error:
        short = _short_name_for(os.fspath(name_or_path) if isinstance(name_or_path, os.PathLike) else name_or_path)
        problem = _hub_problem(error) if short is not None else None
        if short is None or problem is None:
            raise
        what, cause = problem
        repo_id, (dataset, recipe) = f"{hub_namespace()}/{short}", SHORT_NAMES[short]
        at, flag = (f" (revision {revision!r})", f" --revision {revision}") if revision else ("", "")
        first = (str(cause).strip().splitlines() or [""])[0]
        raise HubModelNotAvailableError(
            f"DeS4 model {short!r} = Hub repo {repo_id!r}{at} {what}.\n"
            f"  cause: {type(cause).__name__}: {first}\n"
            "How to get it:\n"
            f"  - connect once with HF_HUB_OFFLINE=0 (unset it) and load it again, or download it ahead of time with "
            f"`hf download {repo_id}{flag}`; afterwards it loads from the cache even with HF_HUB_OFFLINE=1;\n"
            f"  - if your copy lives in another namespace, set {NAMESPACE_ENV}=<user-or-org> (now "
            f"{hub_namespace()!r}) or pass the full repo id;\n"
            "  - for a private repo, log in with `hf auth login` or set HF_TOKEN.\n"
            f"Or train it yourself on {dataset}:\n"
            f"  accelerate launch scripts/train.py --config configs/{recipe}.yaml\n"
            "  and load the output directory: Des4ForSemanticSegmentation.from_pretrained('<output dir>').",
            hub_error=error) from None
