"""JSON Schemas of ``uc2otactl --json`` output, for scripts that consume it (and for our tests).

Every command prints one JSON document; a failure prints :data:`ERROR` instead, whatever the command.
"""

from __future__ import annotations

from typing import Any

_STATUS_VALUES = ["idle", "initiated", "wifi_connected", "wifi_failed", "success", "failed"]

STATUS: dict[str, Any] = {
    "type": "object",
    "required": ["can_id", "status"],
    "properties": {
        "can_id": {"type": "integer", "minimum": 1, "maximum": 127},
        "status": {"enum": _STATUS_VALUES},
        "upload_status": {"type": "string"},
        "upload_progress": {"type": "integer", "minimum": 0, "maximum": 100},
        "message": {"type": "string"},
        "error_code": {"type": "string"},
    },
}

ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["name", "message", "exit_code"],
            "properties": {
                "name": {"type": "string"},
                "message": {"type": "string"},
                "exit_code": {"type": "integer"},
            },
        }
    },
}

COMMANDS: dict[str, dict[str, Any]] = {
    "status": {"type": "object", "patternProperties": {"^[0-9]+$": STATUS}, "additionalProperties": False},
    "scan": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["can_id", "role", "reachable"],
            "properties": {
                "can_id": {"type": "integer"},
                "role": {"type": "string"},
                "reachable": {"type": "boolean"},
                "fw_version": {"type": "string"},
                "build": {"type": "string"},
                "mac": {"type": "string"},
                "update_available": {"type": "boolean"},
            },
        },
    },
    "firmware": {
        "type": "object",
        "required": ["status", "firmware_server", "firmware_count", "firmware"],
        "properties": {
            "status": {"const": "success"},
            "firmware_server": {"type": "string"},
            "firmware_count": {"type": "integer"},
            "firmware": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["filename", "url", "can_id", "size"],
                    "properties": {"filename": {"type": "string"}, "size": {"type": "integer"}},
                },
            },
        },
    },
    "history": {
        "type": "array",
        "items": {"type": "object", "required": ["job_id", "can_id", "method", "state", "started"]},
    },
    "set-server": {"type": "object", "required": ["firmware_server"]},
    "set-wifi": {
        "type": "object",
        "required": ["ssid", "password_set"],
        "additionalProperties": False,
        "properties": {"ssid": {"type": "string"}, "password_set": {"type": "boolean"}},
    },
    "clear-cache": {"type": "object", "required": ["cleared"]},
    "inhibit": {"type": "object", "required": ["inhibited", "released"]},
}
