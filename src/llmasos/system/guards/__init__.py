"""Guards of the system layer: PII detection and redaction, prompt-injection defences for untrusted text."""

from llmasos.system.guards.injection import (
    UNTRUSTED_NOTICE,
    Finding,
    InjectionReport,
    sanitize,
    scan,
    strip_exfiltration,
    wrap_untrusted,
)
from llmasos.system.guards.pii import KINDS, PIIMatch, PIIPolicy, apply_policy, find_pii, redact

__all__ = ["KINDS", "UNTRUSTED_NOTICE", "Finding", "InjectionReport", "PIIMatch", "PIIPolicy", "apply_policy",
           "find_pii", "redact", "sanitize", "scan", "strip_exfiltration", "wrap_untrusted"]
