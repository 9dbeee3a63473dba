"""The QLoRA reward recipe as a script: `bt_peft.recipe` (train, evaluate, merge, check; see its docstring).

    python recipes/qlora_llama3.py --config recipes/configs/llama3_8b_hh.yaml
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/qlora_llama3.py --config ...

To adapt the flow, copy the installed module (`python -c "import bt_peft.recipe as r; print(r.__file__)"`), which
uses only bt-peft's public names, and run the copy the same way.
"""

from bt_peft.recipe import main

if __name__ == "__main__":
    main()
