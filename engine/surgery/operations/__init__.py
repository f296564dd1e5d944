"""Surgery operations: small objects that do and undo one change to a session's model.

The GUI wraps each in a QUndoCommand; the CLI and tests use :class:`engine.surgery.history.History`. Every
operation validates before it touches the model, so an illegal one raises GraftError and changes nothing.
Operations serialise to plain dicts: the project file's recipe is the list of applied operations.

By family, each module building only on :mod:`.operation` (the base, the registry, the shared helpers):
:mod:`.cuts` (delete the output layer, cut at a layer), :mod:`.heads` (add, remove, edit, rename),
:mod:`.trainable` (freeze, learning-rate factors, presets) and :mod:`.inputs` (input channels and size).
A new operation goes in its family's module (or a new sibling imported here): importing this package
imports every family, so :data:`REGISTRY` knows every ``kind`` when a saved recipe is read back.
"""
from engine.surgery.operations.cuts import CutAt, DeleteOutputLayer
from engine.surgery.operations.heads import STRUCTURE_FIELDS, AddHead, RemoveHead, RenameHead, UpdateHead
from engine.surgery.operations.inputs import MAX_INPUT_SIZE, SetInputChannels, SetInputSize, adapt_kernels, first_conv
from engine.surgery.operations.operation import (
    REGISTRY, Operation, SurgeryState, head_input_size, is_within, set_module,
)
from engine.surgery.operations.trainable import SetLrFactor, SetTrainable, freeze_preset

__all__ = [
    "REGISTRY", "Operation", "SurgeryState", "head_input_size", "is_within", "set_module",
    "CutAt", "DeleteOutputLayer",
    "STRUCTURE_FIELDS", "AddHead", "RemoveHead", "RenameHead", "UpdateHead",
    "SetLrFactor", "SetTrainable", "freeze_preset",
    "MAX_INPUT_SIZE", "SetInputChannels", "SetInputSize", "adapt_kernels", "first_conv",
]
