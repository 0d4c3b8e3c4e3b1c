"""JSON Schemas of ``uc2otactl --json`` output, for scripts that consume it (and for our tests).

Every command prints one JSON document; a failure prints :data:`ERROR` instead, whatever the command.
"""

from __future__ import annotations

from typing import Any

from uc2otad.contract import UpdateState

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

#: how one board's update ended (``uc2otactl update``): ``running`` and ``pending`` only after Ctrl-C
#: (a board past the point of no return, or not reached); ``started`` with ``--no-wait``; ``not_due``
#: with ``--all``, for a board whose CheckUpdates state is not ``update_available`` (its message says
#: which state); ``skipped`` when an earlier board of its batch failed; ``planned`` with ``--dry-run``
UPDATE_RESULTS = ["success", "up_to_date", "failed", "cancelled", "started", "running", "pending", "not_due",
                  "skipped", "planned"]  # fmt: skip

#: how ``uc2otactl update`` ended as a whole; ``dry_run``: ``--dry-run`` printed the plan
UPDATE_OUTCOMES = ["success", "up_to_date", "nothing_to_do", "failed", "cancelled", "started", "dry_run"]

#: one board of a batch's plan (StartMultipleOTA's ``plan``)
PLAN_ENTRY: dict[str, Any] = {
    "type": "object",
    "required": ["can_id", "role", "link", "state", "action"],
    "additionalProperties": False,
    "properties": {
        "can_id": {"type": "integer", "minimum": 1, "maximum": 127},
        "role": {"type": "string"},
        "link": {"enum": ["master", "can"]},
        "state": {"type": "string"},
        "action": {"enum": ["update", "skip", "flash_master"]},
        "reason": {"type": "string"},
        "port": {"type": "string"},
    },
}

#: CheckUpdates' states (uc2otad.contract.UpdateState)
CHECK_STATES = [str(state) for state in UpdateState]

CHECK_ENTRY: dict[str, Any] = {
    "type": "object",
    "required": ["can_id", "role", "link", "state"],
    "additionalProperties": False,
    "properties": {
        "can_id": {"type": "integer", "minimum": 1, "maximum": 127},
        "role": {"type": "string"},
        "link": {"enum": ["master", "can"]},
        "state": {"enum": CHECK_STATES},
        "running_version": {"type": "string"},
        "offered_version": {"type": "string"},
        "running_image": {"type": "string"},
        "offered_image": {"type": "string"},
    },
}

BOARD_UPDATE: dict[str, Any] = {
    "type": "object",
    "required": ["can_id", "result"],
    "additionalProperties": False,
    "properties": {
        "can_id": {"type": "integer", "minimum": 1, "maximum": 127},
        "result": {"enum": UPDATE_RESULTS},
        "job_id": {"type": "string"},
        "status": STATUS,
        "message": {"type": "string"},
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
                "link": {"enum": ["master", "can"]},
                "update_available": {"type": "boolean"},
            },
        },
    },
    "check": {"type": "array", "items": CHECK_ENTRY},
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
    "set-ota-password": {
        "type": "object",
        "required": ["password_set"],
        "additionalProperties": False,
        "properties": {"password_set": {"type": "boolean"}},
    },
    "clear-cache": {
        "type": "object",
        "required": ["cleared", "deleted", "known_good_deleted", "known_good_kept"],
        "properties": {
            "cleared": {"const": True},
            "deleted": {"type": "integer", "minimum": 0},
            "known_good_deleted": {"type": "integer", "minimum": 0},
            "known_good_kept": {"type": "integer", "minimum": 0},
        },
    },
    # ImportFirmware's reply: the release, each image offered offline with its sha256, the signing key
    "import": {
        "type": "object",
        "required": ["status", "images"],
        "properties": {
            "status": {"const": "success"},
            "version": {"type": "string"},
            "images": {
                "type": "object",
                "additionalProperties": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            },
            "signed_by": {"type": "string"},
        },
    },
    # a slave's rollback: the image put back and how its job ended (the master's: as flash-master)
    "rollback": {
        "type": "object",
        "required": ["can_id", "result", "exit_code", "firmware", "sha256", "board"],
        "properties": {
            "can_id": {"type": "integer", "minimum": 2, "maximum": 127},
            "result": {"enum": UPDATE_RESULTS},
            "exit_code": {"type": "integer"},
            "firmware": {"type": "string"},
            "firmware_version": {"type": "string"},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "job_id": {"type": "string"},
            "board": BOARD_UPDATE,
        },
    },
    "inhibit": {"type": "object", "required": ["inhibited", "released"]},
    "update": {
        "type": "object",
        "required": ["result", "exit_code", "boards"],
        "additionalProperties": False,
        "properties": {
            "result": {
                "enum": [
                    "success",
                    "up_to_date",
                    "nothing_to_do",
                    "failed",
                    "cancelled",
                    "started",
                    "dry_run",
                ]
            },
            "exit_code": {"type": "integer"},
            "batch_id": {"type": "string"},
            "plan": {"type": "array", "items": PLAN_ENTRY},
            "master": {
                "type": "object",
                "required": ["included", "state"],
                "properties": {
                    "included": {"type": "boolean"},
                    "state": {"type": "string"},
                    "port": {"type": "string"},
                    "reason": {"type": "string"},
                },
            },
            "boards": {
                "type": "object",
                "patternProperties": {"^[0-9]+$": BOARD_UPDATE},
                "additionalProperties": False,
            },
        },
    },
    "cancel": {
        "type": "object",
        "required": ["can_id", "cancelled", "status"],
        "additionalProperties": False,
        "properties": {"can_id": {"type": "integer"}, "cancelled": {"const": True}, "status": STATUS},
    },
    "ports": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["device"],
            "properties": {
                "device": {"type": "string"},
                "description": {"type": "string"},
                "vid": {"type": "integer"},
                "pid": {"type": "integer"},
            },
        },
    },
    # the final USB flash status (GetUSBFlashStatus): the document's fields
    "flash-master": {
        "type": "object",
        "required": ["status", "progress", "message", "timestamp"],
        "properties": {
            "status": {"enum": ["success", "failed"]},
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "message": {"type": "string"},
            "details": {"type": "string"},
            "error_code": {"type": "string"},
        },
    },
}
#: the master's rollback is a USB flash: its document is the final USB flash status, as flash-master's
COMMANDS["rollback"] = {"anyOf": [COMMANDS["rollback"], COMMANDS["flash-master"]]}
