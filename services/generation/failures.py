"""Why a generation failed, told two ways: to its user and to whoever reads the logs.

The user gets a stable code and a short sentence, never exception text: that can hold file paths,
CUDA messages or another job's details. The detail goes to the log of the process that met the
failure, under an incident id that the user sees too, so support can go from one to the other.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from pingvas.generation.v1 import generation_resources_pb2 as resources

from services.common.errors import new_incident_id


class FailureCode(enum.StrEnum):
    """Stable, UPPER_SNAKE like `ErrorInfo.reason`: clients may branch on them."""

    MODEL_NOT_INSTALLED = "MODEL_NOT_INSTALLED"
    MODEL_LOAD_FAILED = "MODEL_LOAD_FAILED"
    # The model could not be fetched from the models bucket into the cache (a file not matching
    # its manifest's sha256, or the bucket unreachable).
    MODEL_DOWNLOAD_FAILED = "MODEL_DOWNLOAD_FAILED"
    INFERENCE_FAILED = "INFERENCE_FAILED"
    WORKER_LOST = "WORKER_LOST"
    IMAGE_STORE_UNAVAILABLE = "IMAGE_STORE_UNAVAILABLE"
    # The init image or mask could not be read from the images bucket, or did not decode.
    INPUT_IMAGE_UNAVAILABLE = "INPUT_IMAGE_UNAVAILABLE"
    # Failures recorded before codes existed: migration 0005 dropped their raw text.
    UNKNOWN = "UNKNOWN"


_SENTENCES = {
    FailureCode.MODEL_NOT_INSTALLED: "The model is not installed on the GPU workers.",
    FailureCode.MODEL_LOAD_FAILED: "The GPU workers could not load the model.",
    FailureCode.MODEL_DOWNLOAD_FAILED: "The GPU workers could not download the model; no credits were charged.",
    FailureCode.INFERENCE_FAILED: "The GPU worker could not complete this generation.",
    FailureCode.WORKER_LOST: "The GPU worker running this generation stopped responding.",
    FailureCode.IMAGE_STORE_UNAVAILABLE: "The image was made but could not be stored; no credits were charged.",
    FailureCode.INPUT_IMAGE_UNAVAILABLE: (
        "The GPU workers could not read the init image or mask; no credits were charged."
    ),
    FailureCode.UNKNOWN: "The generation failed.",
}


@dataclass(frozen=True)
class Failure:
    code: FailureCode
    incident_id: str

    @property
    def sentence(self) -> str:
        """What the user reads, the incident id included so they can quote it."""
        return f"{_SENTENCES[self.code]} (incident {self.incident_id})"

    def to_proto(self) -> resources.GenerationFailed:
        return resources.GenerationFailed(reason=self.sentence, code=self.code, incident_id=self.incident_id)

    @classmethod
    def report(
        cls, code: FailureCode, subject: str, detail: str, *, logger: logging.Logger, exc_info: bool = False
    ) -> Failure:
        """Log `detail` about `subject` under a new incident id, and return what the user may see."""
        failure = cls(code, new_incident_id())
        logger.error("incident %s: %s %s: %s", failure.incident_id, code, subject, detail, exc_info=exc_info)
        return failure
