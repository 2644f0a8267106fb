"""Export TL LoRA through the real server: registered with tooltips, writes the LoRA from a real training run
with its token where no LoRA list shows it (the run's own embeddings folder, named by the node's trigger
output), and the stock LoraLoaderModelOnly of the same server samples with it and the trigger, loading
every key (no "lora key not loaded" in the server log)."""

from __future__ import annotations

import json

from safetensors import safe_open

from headless.server import ComfyServer
from headless.workflow import nodes_of_type, set_training_inputs
from shapes_world.model import CHECKPOINT_NAME
from textloc.weights import lora_export

RUN = "e2e_lora_export"
RANK = 4
LORA = f"textual_localization/{RUN}_lora_r{RANK}.safetensors"


def test_export_node_is_registered_with_tooltips(object_info: dict) -> None:
    info = object_info["TL_ExportLoRA"]
    assert info["display_name"] == "Export TL LoRA" and info["category"].startswith("textual_localization/")
    assert info["output_node"] is True
    for name, spec in info["input"]["required"].items():
        assert spec[1].get("tooltip"), name
    assert all(info["output_tooltips"])
    # Every layer of every family can be exported exact: up to SDXL's 1280 (its 1280 x 2048 layers).
    assert info["input"]["required"]["rank"][1]["max"] == lora_export.MAX_RANK >= 1280
    options = object_info["TL_TrainingOptions"]["input"]
    lora_rank = {**options["required"], **options.get("optional", {})}["lora_rank"]
    assert lora_rank[1]["max"] == lora_export.MAX_RANK


def test_trained_run_exports_a_lora_the_stock_loader_applies(comfy_server: ComfyServer, workflow_prompt) -> None:
    prompt = workflow_prompt("tl_train.json")
    (trainer,) = nodes_of_type(prompt, "TL_TrainKV")
    set_training_inputs(prompt, trainer, steps=2, checkpoint_every=2, output_name=RUN)
    set_training_inputs(prompt, trainer, lora_rank=RANK + 4)  # the trainer's own export, beside the node's
    prompt["80"] = {"class_type": "TL_ExportLoRA", "inputs": {"tl_result": [trainer, 2], "rank": RANK,
                                                             "file_name": ""}}
    prompt["81"] = {"class_type": "PreviewAny", "inputs": {"source": ["80", 1]}}
    trigger = comfy_server.run(prompt, timeout=900).outputs["81"]["text"][0]
    assert trigger == f"embedding:{RUN}/tl_ball ball"

    lora = comfy_server.output_dir / "loras" / LORA
    with safe_open(lora, "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert keys and all(k.startswith("lora_unet_") and ".attn2.to_" not in k for k in keys)
    assert {k.rsplit(".", 2)[-2] if k.endswith(".weight") else "alpha" for k in keys} == {
        "lora_up", "lora_down", "alpha"}
    assert meta["kind"] == "kv_lora" and meta["rank"] == str(RANK) and json.loads(meta["tokens"]) == ["tl_ball"]
    assert len(json.loads(meta["relative_errors"])) == len(keys) // 3
    assert meta["trigger"] == trigger and json.loads(meta["embeddings"]) == {"tl_ball": f"{RUN}/tl_ball.safetensors"}
    assert (comfy_server.output_dir / "embeddings" / RUN / "tl_ball.safetensors").is_file()
    # Every LoRA list (the stock loaders', Apply TL Weights') holds the LoRA files and no token file.
    info = comfy_server.object_info()
    for node, name in (("LoraLoader", "lora_name"), ("LoraLoaderModelOnly", "lora_name")):
        listed = info[node]["input"]["required"][name][0]
        assert LORA in listed and f"textual_localization/{RUN}_lora_r{RANK + 4}.safetensors" in listed
        assert not [n for n in listed if "_embeddings/" in n or n.endswith("/tl_ball.safetensors")], listed

    log_start = len(comfy_server.log_tail(10_000_000))
    stock = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT_NAME}},
        "2": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": LORA,
                                                             "strength_model": 1.0}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": f"a photo of a {trigger}", "clip": ["1", 1]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0], "seed": 3,
            "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "e2e_lora"}},
    }
    result = comfy_server.run(stock, timeout=300)
    assert result.outputs["8"]["images"]
    log = comfy_server.log_tail(10_000_000)[log_start:]
    assert "lora key not loaded" not in log and "NOT LOADED" not in log, log[-2000:]
    assert "does not exist" not in log, log[-2000:]  # ComfyUI's embedding lookup found the trigger's token
