import datetime

from google.protobuf import any_pb2 as _any_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ComputeEngineDiskType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPUTE_ENGINE_DISK_TYPE_UNSPECIFIED: _ClassVar[ComputeEngineDiskType]
    COMPUTE_ENGINE_DISK_TYPE_STANDARD: _ClassVar[ComputeEngineDiskType]
    COMPUTE_ENGINE_DISK_TYPE_SSD: _ClassVar[ComputeEngineDiskType]
    COMPUTE_ENGINE_DISK_TYPE_BALANCED: _ClassVar[ComputeEngineDiskType]
    COMPUTE_ENGINE_DISK_TYPE_HYPERDISK_BALANCED: _ClassVar[ComputeEngineDiskType]

class ComputeEngineLicenseType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPUTE_ENGINE_LICENSE_TYPE_DEFAULT: _ClassVar[ComputeEngineLicenseType]
    COMPUTE_ENGINE_LICENSE_TYPE_PAYG: _ClassVar[ComputeEngineLicenseType]
    COMPUTE_ENGINE_LICENSE_TYPE_BYOL: _ClassVar[ComputeEngineLicenseType]

class ComputeEngineBootOption(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPUTE_ENGINE_BOOT_OPTION_UNSPECIFIED: _ClassVar[ComputeEngineBootOption]
    COMPUTE_ENGINE_BOOT_OPTION_EFI: _ClassVar[ComputeEngineBootOption]
    COMPUTE_ENGINE_BOOT_OPTION_BIOS: _ClassVar[ComputeEngineBootOption]

class ComputeEngineNetworkTier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPUTE_ENGINE_NETWORK_TIER_UNSPECIFIED: _ClassVar[ComputeEngineNetworkTier]
    NETWORK_TIER_STANDARD: _ClassVar[ComputeEngineNetworkTier]
    NETWORK_TIER_PREMIUM: _ClassVar[ComputeEngineNetworkTier]

class BootConversion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BOOT_CONVERSION_UNSPECIFIED: _ClassVar[BootConversion]
    NONE: _ClassVar[BootConversion]
    BIOS_TO_EFI: _ClassVar[BootConversion]
COMPUTE_ENGINE_DISK_TYPE_UNSPECIFIED: ComputeEngineDiskType
COMPUTE_ENGINE_DISK_TYPE_STANDARD: ComputeEngineDiskType
COMPUTE_ENGINE_DISK_TYPE_SSD: ComputeEngineDiskType
COMPUTE_ENGINE_DISK_TYPE_BALANCED: ComputeEngineDiskType
COMPUTE_ENGINE_DISK_TYPE_HYPERDISK_BALANCED: ComputeEngineDiskType
COMPUTE_ENGINE_LICENSE_TYPE_DEFAULT: ComputeEngineLicenseType
COMPUTE_ENGINE_LICENSE_TYPE_PAYG: ComputeEngineLicenseType
COMPUTE_ENGINE_LICENSE_TYPE_BYOL: ComputeEngineLicenseType
COMPUTE_ENGINE_BOOT_OPTION_UNSPECIFIED: ComputeEngineBootOption
COMPUTE_ENGINE_BOOT_OPTION_EFI: ComputeEngineBootOption
COMPUTE_ENGINE_BOOT_OPTION_BIOS: ComputeEngineBootOption
COMPUTE_ENGINE_NETWORK_TIER_UNSPECIFIED: ComputeEngineNetworkTier
NETWORK_TIER_STANDARD: ComputeEngineNetworkTier
NETWORK_TIER_PREMIUM: ComputeEngineNetworkTier
BOOT_CONVERSION_UNSPECIFIED: BootConversion
NONE: BootConversion
BIOS_TO_EFI: BootConversion

class CloneJob(_message.Message):
    __slots__ = ("compute_engine_target_details", "compute_engine_disks_target_details", "compute_engine_vm_details", "target_details", "create_time", "end_time", "name", "state", "state_time", "error", "steps", "replication_cycle")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[CloneJob.State]
        PENDING: _ClassVar[CloneJob.State]
        ACTIVE: _ClassVar[CloneJob.State]
        FAILED: _ClassVar[CloneJob.State]
        SUCCEEDED: _ClassVar[CloneJob.State]
        CANCELLED: _ClassVar[CloneJob.State]
        CANCELLING: _ClassVar[CloneJob.State]
        ADAPTING_OS: _ClassVar[CloneJob.State]
    STATE_UNSPECIFIED: CloneJob.State
    PENDING: CloneJob.State
    ACTIVE: CloneJob.State
    FAILED: CloneJob.State
    SUCCEEDED: CloneJob.State
    CANCELLED: CloneJob.State
    CANCELLING: CloneJob.State
    ADAPTING_OS: CloneJob.State
    COMPUTE_ENGINE_TARGET_DETAILS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_ENGINE_DISKS_TARGET_DETAILS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_ENGINE_VM_DETAILS_FIELD_NUMBER: _ClassVar[int]
    TARGET_DETAILS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_CYCLE_FIELD_NUMBER: _ClassVar[int]
    compute_engine_target_details: ComputeEngineTargetDetails
    compute_engine_disks_target_details: ComputeEngineDisksTargetDetails
    compute_engine_vm_details: TargetVMDetails
    target_details: TargetVMDetails
    create_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    name: str
    state: CloneJob.State
    state_time: _timestamp_pb2.Timestamp
    error: Status
    steps: _containers.RepeatedCompositeFieldContainer[CloneStep]
    replication_cycle: str
    def __init__(self, compute_engine_target_details: _Optional[_Union[ComputeEngineTargetDetails, _Mapping]] = ..., compute_engine_disks_target_details: _Optional[_Union[ComputeEngineDisksTargetDetails, _Mapping]] = ..., compute_engine_vm_details: _Optional[_Union[TargetVMDetails, _Mapping]] = ..., target_details: _Optional[_Union[TargetVMDetails, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., name: _Optional[str] = ..., state: _Optional[_Union[CloneJob.State, str]] = ..., state_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[_Union[Status, _Mapping]] = ..., steps: _Optional[_Iterable[_Union[CloneStep, _Mapping]]] = ..., replication_cycle: _Optional[str] = ...) -> None: ...

class CloneStep(_message.Message):
    __slots__ = ("adapting_os", "preparing_vm_disks", "instantiating_migrated_vm", "start_time", "end_time")
    ADAPTING_OS_FIELD_NUMBER: _ClassVar[int]
    PREPARING_VM_DISKS_FIELD_NUMBER: _ClassVar[int]
    INSTANTIATING_MIGRATED_VM_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    adapting_os: AdaptingOSStep
    preparing_vm_disks: PreparingVMDisksStep
    instantiating_migrated_vm: InstantiatingMigratedVMStep
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, adapting_os: _Optional[_Union[AdaptingOSStep, _Mapping]] = ..., preparing_vm_disks: _Optional[_Union[PreparingVMDisksStep, _Mapping]] = ..., instantiating_migrated_vm: _Optional[_Union[InstantiatingMigratedVMStep, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AdaptingOSStep(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PreparingVMDisksStep(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InstantiatingMigratedVMStep(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Status(_message.Message):
    __slots__ = ("code", "message", "details")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    details: _containers.RepeatedCompositeFieldContainer[_any_pb2.Any]
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., details: _Optional[_Iterable[_Union[_any_pb2.Any, _Mapping]]] = ...) -> None: ...

class TargetVMDetails(_message.Message):
    __slots__ = ("vm_name", "zone", "machine_type_series", "machine_type", "network_tags", "network_interfaces", "service_account", "disk_type", "labels", "license_type", "applied_license", "compute_scheduling", "secure_boot", "boot_option", "metadata", "project")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VM_NAME_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    MACHINE_TYPE_SERIES_FIELD_NUMBER: _ClassVar[int]
    MACHINE_TYPE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_TAGS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_INTERFACES_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    DISK_TYPE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LICENSE_TYPE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_LICENSE_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SCHEDULING_FIELD_NUMBER: _ClassVar[int]
    SECURE_BOOT_FIELD_NUMBER: _ClassVar[int]
    BOOT_OPTION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    vm_name: str
    zone: str
    machine_type_series: str
    machine_type: str
    network_tags: _containers.RepeatedScalarFieldContainer[str]
    network_interfaces: _containers.RepeatedCompositeFieldContainer[NetworkInterface]
    service_account: str
    disk_type: ComputeEngineDiskType
    labels: _containers.ScalarMap[str, str]
    license_type: ComputeEngineLicenseType
    applied_license: AppliedLicense
    compute_scheduling: ComputeScheduling
    secure_boot: bool
    boot_option: ComputeEngineBootOption
    metadata: _containers.ScalarMap[str, str]
    project: str
    def __init__(self, vm_name: _Optional[str] = ..., zone: _Optional[str] = ..., machine_type_series: _Optional[str] = ..., machine_type: _Optional[str] = ..., network_tags: _Optional[_Iterable[str]] = ..., network_interfaces: _Optional[_Iterable[_Union[NetworkInterface, _Mapping]]] = ..., service_account: _Optional[str] = ..., disk_type: _Optional[_Union[ComputeEngineDiskType, str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., license_type: _Optional[_Union[ComputeEngineLicenseType, str]] = ..., applied_license: _Optional[_Union[AppliedLicense, _Mapping]] = ..., compute_scheduling: _Optional[_Union[ComputeScheduling, _Mapping]] = ..., secure_boot: _Optional[bool] = ..., boot_option: _Optional[_Union[ComputeEngineBootOption, str]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., project: _Optional[str] = ...) -> None: ...

class ComputeEngineTargetDetails(_message.Message):
    __slots__ = ("vm_name", "project", "zone", "machine_type_series", "machine_type", "network_tags", "network_interfaces", "service_account", "disk_type", "labels", "license_type", "applied_license", "compute_scheduling", "secure_boot", "enable_vtpm", "enable_integrity_monitoring", "boot_option", "metadata", "additional_licenses", "hostname", "encryption", "boot_conversion", "adaptation_modifiers", "disk_replica_zones", "storage_pool")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VM_NAME_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    MACHINE_TYPE_SERIES_FIELD_NUMBER: _ClassVar[int]
    MACHINE_TYPE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_TAGS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_INTERFACES_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    DISK_TYPE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LICENSE_TYPE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_LICENSE_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SCHEDULING_FIELD_NUMBER: _ClassVar[int]
    SECURE_BOOT_FIELD_NUMBER: _ClassVar[int]
    ENABLE_VTPM_FIELD_NUMBER: _ClassVar[int]
    ENABLE_INTEGRITY_MONITORING_FIELD_NUMBER: _ClassVar[int]
    BOOT_OPTION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ADDITIONAL_LICENSES_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_FIELD_NUMBER: _ClassVar[int]
    BOOT_CONVERSION_FIELD_NUMBER: _ClassVar[int]
    ADAPTATION_MODIFIERS_FIELD_NUMBER: _ClassVar[int]
    DISK_REPLICA_ZONES_FIELD_NUMBER: _ClassVar[int]
    STORAGE_POOL_FIELD_NUMBER: _ClassVar[int]
    vm_name: str
    project: str
    zone: str
    machine_type_series: str
    machine_type: str
    network_tags: _containers.RepeatedScalarFieldContainer[str]
    network_interfaces: _containers.RepeatedCompositeFieldContainer[NetworkInterface]
    service_account: str
    disk_type: ComputeEngineDiskType
    labels: _containers.ScalarMap[str, str]
    license_type: ComputeEngineLicenseType
    applied_license: AppliedLicense
    compute_scheduling: ComputeScheduling
    secure_boot: bool
    enable_vtpm: bool
    enable_integrity_monitoring: bool
    boot_option: ComputeEngineBootOption
    metadata: _containers.ScalarMap[str, str]
    additional_licenses: _containers.RepeatedScalarFieldContainer[str]
    hostname: str
    encryption: Encryption
    boot_conversion: BootConversion
    adaptation_modifiers: _containers.RepeatedCompositeFieldContainer[AdaptationModifier]
    disk_replica_zones: _containers.RepeatedScalarFieldContainer[str]
    storage_pool: str
    def __init__(self, vm_name: _Optional[str] = ..., project: _Optional[str] = ..., zone: _Optional[str] = ..., machine_type_series: _Optional[str] = ..., machine_type: _Optional[str] = ..., network_tags: _Optional[_Iterable[str]] = ..., network_interfaces: _Optional[_Iterable[_Union[NetworkInterface, _Mapping]]] = ..., service_account: _Optional[str] = ..., disk_type: _Optional[_Union[ComputeEngineDiskType, str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., license_type: _Optional[_Union[ComputeEngineLicenseType, str]] = ..., applied_license: _Optional[_Union[AppliedLicense, _Mapping]] = ..., compute_scheduling: _Optional[_Union[ComputeScheduling, _Mapping]] = ..., secure_boot: _Optional[bool] = ..., enable_vtpm: _Optional[bool] = ..., enable_integrity_monitoring: _Optional[bool] = ..., boot_option: _Optional[_Union[ComputeEngineBootOption, str]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., additional_licenses: _Optional[_Iterable[str]] = ..., hostname: _Optional[str] = ..., encryption: _Optional[_Union[Encryption, _Mapping]] = ..., boot_conversion: _Optional[_Union[BootConversion, str]] = ..., adaptation_modifiers: _Optional[_Iterable[_Union[AdaptationModifier, _Mapping]]] = ..., disk_replica_zones: _Optional[_Iterable[str]] = ..., storage_pool: _Optional[str] = ...) -> None: ...

class ComputeEngineDisksTargetDetails(_message.Message):
    __slots__ = ("disks_target_details", "vm_target_details", "disks")
    DISKS_TARGET_DETAILS_FIELD_NUMBER: _ClassVar[int]
    VM_TARGET_DETAILS_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    disks_target_details: DisksMigrationDisksTargetDetails
    vm_target_details: DisksMigrationVmTargetDetails
    disks: _containers.RepeatedCompositeFieldContainer[PersistentDisk]
    def __init__(self, disks_target_details: _Optional[_Union[DisksMigrationDisksTargetDetails, _Mapping]] = ..., vm_target_details: _Optional[_Union[DisksMigrationVmTargetDetails, _Mapping]] = ..., disks: _Optional[_Iterable[_Union[PersistentDisk, _Mapping]]] = ...) -> None: ...

class NetworkInterface(_message.Message):
    __slots__ = ("network", "subnetwork", "internal_ip", "external_ip", "network_tier")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    SUBNETWORK_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_IP_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_IP_FIELD_NUMBER: _ClassVar[int]
    NETWORK_TIER_FIELD_NUMBER: _ClassVar[int]
    network: str
    subnetwork: str
    internal_ip: str
    external_ip: str
    network_tier: ComputeEngineNetworkTier
    def __init__(self, network: _Optional[str] = ..., subnetwork: _Optional[str] = ..., internal_ip: _Optional[str] = ..., external_ip: _Optional[str] = ..., network_tier: _Optional[_Union[ComputeEngineNetworkTier, str]] = ...) -> None: ...

class AppliedLicense(_message.Message):
    __slots__ = ("type", "os_license")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[AppliedLicense.Type]
        NONE: _ClassVar[AppliedLicense.Type]
        PAYG: _ClassVar[AppliedLicense.Type]
        BYOL: _ClassVar[AppliedLicense.Type]
    TYPE_UNSPECIFIED: AppliedLicense.Type
    NONE: AppliedLicense.Type
    PAYG: AppliedLicense.Type
    BYOL: AppliedLicense.Type
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OS_LICENSE_FIELD_NUMBER: _ClassVar[int]
    type: AppliedLicense.Type
    os_license: str
    def __init__(self, type: _Optional[_Union[AppliedLicense.Type, str]] = ..., os_license: _Optional[str] = ...) -> None: ...

class ComputeScheduling(_message.Message):
    __slots__ = ("on_host_maintenance", "restart_type", "node_affinities", "min_node_cpus")
    class OnHostMaintenance(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ON_HOST_MAINTENANCE_UNSPECIFIED: _ClassVar[ComputeScheduling.OnHostMaintenance]
        TERMINATE: _ClassVar[ComputeScheduling.OnHostMaintenance]
        MIGRATE: _ClassVar[ComputeScheduling.OnHostMaintenance]
    ON_HOST_MAINTENANCE_UNSPECIFIED: ComputeScheduling.OnHostMaintenance
    TERMINATE: ComputeScheduling.OnHostMaintenance
    MIGRATE: ComputeScheduling.OnHostMaintenance
    class RestartType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        RESTART_TYPE_UNSPECIFIED: _ClassVar[ComputeScheduling.RestartType]
        AUTOMATIC_RESTART: _ClassVar[ComputeScheduling.RestartType]
        NO_AUTOMATIC_RESTART: _ClassVar[ComputeScheduling.RestartType]
    RESTART_TYPE_UNSPECIFIED: ComputeScheduling.RestartType
    AUTOMATIC_RESTART: ComputeScheduling.RestartType
    NO_AUTOMATIC_RESTART: ComputeScheduling.RestartType
    ON_HOST_MAINTENANCE_FIELD_NUMBER: _ClassVar[int]
    RESTART_TYPE_FIELD_NUMBER: _ClassVar[int]
    NODE_AFFINITIES_FIELD_NUMBER: _ClassVar[int]
    MIN_NODE_CPUS_FIELD_NUMBER: _ClassVar[int]
    on_host_maintenance: ComputeScheduling.OnHostMaintenance
    restart_type: ComputeScheduling.RestartType
    node_affinities: _containers.RepeatedCompositeFieldContainer[SchedulingNodeAffinity]
    min_node_cpus: int
    def __init__(self, on_host_maintenance: _Optional[_Union[ComputeScheduling.OnHostMaintenance, str]] = ..., restart_type: _Optional[_Union[ComputeScheduling.RestartType, str]] = ..., node_affinities: _Optional[_Iterable[_Union[SchedulingNodeAffinity, _Mapping]]] = ..., min_node_cpus: _Optional[int] = ...) -> None: ...

class SchedulingNodeAffinity(_message.Message):
    __slots__ = ("key", "operator", "values")
    class Operator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OPERATOR_UNSPECIFIED: _ClassVar[SchedulingNodeAffinity.Operator]
        IN: _ClassVar[SchedulingNodeAffinity.Operator]
        NOT_IN: _ClassVar[SchedulingNodeAffinity.Operator]
    OPERATOR_UNSPECIFIED: SchedulingNodeAffinity.Operator
    IN: SchedulingNodeAffinity.Operator
    NOT_IN: SchedulingNodeAffinity.Operator
    KEY_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    key: str
    operator: SchedulingNodeAffinity.Operator
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[str] = ..., operator: _Optional[_Union[SchedulingNodeAffinity.Operator, str]] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class Encryption(_message.Message):
    __slots__ = ("kms_key",)
    KMS_KEY_FIELD_NUMBER: _ClassVar[int]
    kms_key: str
    def __init__(self, kms_key: _Optional[str] = ...) -> None: ...

class PersistentDisk(_message.Message):
    __slots__ = ("source_disk_number", "disk_uri")
    SOURCE_DISK_NUMBER_FIELD_NUMBER: _ClassVar[int]
    DISK_URI_FIELD_NUMBER: _ClassVar[int]
    source_disk_number: int
    disk_uri: str
    def __init__(self, source_disk_number: _Optional[int] = ..., disk_uri: _Optional[str] = ...) -> None: ...

class DisksMigrationDisksTargetDetails(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DisksMigrationVmTargetDetails(_message.Message):
    __slots__ = ("vm_uri",)
    VM_URI_FIELD_NUMBER: _ClassVar[int]
    vm_uri: str
    def __init__(self, vm_uri: _Optional[str] = ...) -> None: ...

class AdaptationModifier(_message.Message):
    __slots__ = ("modifier", "value")
    MODIFIER_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    modifier: str
    value: str
    def __init__(self, modifier: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
