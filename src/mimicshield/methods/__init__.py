"""The registry of protection methods: name → class (DESIGN §3); staged runs of them."""

from __future__ import annotations

from .advdm import AdvDM
from .advdm_minus import AdvDMMinus
from .amortised import Amortised, ProtectorMismatchError
from .base import ProtectionMethod, TargetedMethod
from .mist import Mist
from .pca_minus import PCAMinus
from .photoguard import PhotoGuard
from .sds_minus import SDSMinus
from .sds_plus import SDSPlus
from .sdst import SDST
from .staged import Stage, Staged

METHODS: dict[str, type[ProtectionMethod]] = {
    method.name: method
    for method in (
        SDSMinus,
        SDSPlus,
        SDST,
        AdvDM,
        AdvDMMinus,
        PhotoGuard,
        Mist,
        PCAMinus,
        Amortised,
    )
}

__all__ = [
    "METHODS",
    "Amortised",
    "ProtectionMethod",
    "ProtectorMismatchError",
    "Stage",
    "Staged",
    "TargetedMethod",
]
