"""How the network runs on this machine: the process's memory allocator (:mod:`.allocator`), a frozen
trunk run by onnxruntime on a CPU (:mod:`.onnx_trunk`, built with :mod:`.onnx_convert`) and the batch
size picked by measuring (:mod:`.batch_size`)."""
