"""Command and status codes of the Blynk hardware protocol (reference protocol.md §2 and §3)."""

from enum import IntEnum


class Command(IntEnum):
    """The first header byte. Codes the hardware pipeline knows, with their C++ library names."""

    RESPONSE = 0
    REGISTER = 1  # app side in the legacy server; ignored on the hardware pipeline
    LOGIN = 2
    PING = 6
    TWEET = 12
    EMAIL = 13
    NOTIFY = 14
    BRIDGE = 15
    HARDWARE_SYNC = 16
    INTERNAL = 17
    SMS = 18
    PROPERTY = 19
    HARDWARE = 20
    GROUP = 21
    HW_LOGIN = 29
    REDIRECT = 41
    DEBUG_PRINT = 55
    EVENT_LOG = 64
    EVENT_CLEAR = 65


class Status(IntEnum):
    """The status carried in a RESPONSE header instead of a length."""

    SUCCESS = 200
    QUOTA_LIMIT = 1
    ILLEGAL_COMMAND = 2
    NOT_REGISTERED = 3
    ALREADY_REGISTERED = 4
    NOT_AUTHENTICATED = 5
    NOT_ALLOWED = 6
    DEVICE_NOT_IN_NETWORK = 7
    NO_ACTIVE_DASHBOARD = 8
    INVALID_TOKEN = 9
    ILLEGAL_COMMAND_BODY = 11
    GET_GRAPH_DATA_EXCEPTION = 12
    NTF_INVALID_BODY = 13
    NTF_NOT_AUTHORIZED = 14
    NTF_EXCEPTION = 15
    TIMEOUT = 16
    NO_DATA = 17
    DEVICE_WENT_OFFLINE = 18
    SERVER_EXCEPTION = 19
    NOT_SUPPORTED_VERSION = 20
    ENERGY_LIMIT = 21
    OPERATION_ACCEPT = 23
    OPERATION_DECLINE = 24


HEADER_SIZE = 5
MAX_WIRE_BODY = 0xFFFF  # the length field is 16 bits
MAX_MSG_ID = 0xFFFF
