"""des4-hf: DeS4 semi-supervised semantic segmentation (IJCAI-23) on timm, transformers and accelerate.

Importing the package registers ``Des4Config``, ``Des4ForSemanticSegmentation`` and ``Des4ImageProcessor`` with
the transformers Auto classes, so that ``AutoModelForSemanticSegmentation`` and ``pipeline("image-segmentation")``
load DeS4 checkpoints, and saved checkpoints carry their code for ``trust_remote_code=True``. It also gives
huggingface_hub's shared client a timeout (``$DES4_HUB_TIMEOUT``, 30 s) when it has none, so that no Hub call through
the package waits forever on a Hub that accepts the connection and never answers.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation, AutoVideoProcessor

from .configuration_des4 import Des4Config
from .hub_names import accept_short_names, set_hub_timeout
from .image_processing_des4 import Des4ImageProcessor, Des4ImageProcessorPil
from .modeling_des4 import Des4ForSemanticSegmentation, Des4PreTrainedModel, PrototypeHead

__version__ = "0.1.0"


class _NoVideoProcessor:
    """What transformers < 5.20 finds for DeS4 under ``AutoVideoProcessor`` (``pipeline()`` asks for one, and lets it
    fail): a one-line refusal instead of the custom-code question."""

    @classmethod
    def from_pretrained(cls, *args: object, **kwargs: object) -> None:
        raise ValueError("DeS4 has no video processor: load its image processor with AutoImageProcessor")


AutoConfig.register(Des4Config.model_type, Des4Config, exist_ok=True)
AutoModelForSemanticSegmentation.register(Des4Config, Des4ForSemanticSegmentation, exist_ok=True)
AutoImageProcessor.register(Des4Config, image_processor_classes={"torchvision": Des4ImageProcessor,
                                                                 "pil": Des4ImageProcessorPil}, exist_ok=True)
# DeS4 has no video processor. Said locally, so that pipeline()'s optional AutoVideoProcessor load (transformers >= 5.25
# guesses a remote "Des4VideoProcessor" from the image processor's auto_map) fails quietly instead of asking whether
# to run the repository's code.
try:
    AutoVideoProcessor.register(Des4Config, video_processor_classes={"torchvision": None, "pil": None}, exist_ok=True)
except TypeError:  # transformers < 5.20: one class per config, no backends; a stand-in that refuses in one line
    AutoVideoProcessor.register(Des4Config, _NoVideoProcessor, exist_ok=True)
for _auto_class in (AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation):  # short names, e.g. in pipeline
    accept_short_names(_auto_class)
# save_pretrained then writes the code beside the weights, with an auto_map: loadable without des4-hf installed
Des4Config.register_for_auto_class()
Des4ForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
Des4ImageProcessor.register_for_auto_class("AutoImageProcessor")


def _default_hub_timeout() -> None:
    from huggingface_hub import get_session

    timeout = get_session().timeout
    if getattr(timeout, "read", timeout) is None:  # none set by the user: huggingface_hub's default, forever
        set_hub_timeout()


_default_hub_timeout()

__all__ = ["Des4Config", "Des4ForSemanticSegmentation", "Des4ImageProcessor", "Des4ImageProcessorPil",
           "Des4PreTrainedModel", "PrototypeHead", "__version__"]
