"""Export: `merge_and_save` (merge; the one-tensor-at-a-time route in streaming_merge), the model card and the Hub
upload (model_card). Imports only the core modules of `bt_peft`."""
