"""Export: `merge_and_save` (merge; the one-tensor-at-a-time route in streaming_merge), `export_reward_model` (the
scalar and HALOs forms, reward_export), both reading and writing safetensors tensor by tensor (safetensors_io), the
model card and the Hub upload (model_card). Imports only the core modules
of `bt_peft`."""
