"""The ConfigMap carries exactly the resolved train.yaml."""

from internvl_operator.render import render
from internvl_trainer.config import load_train_config
from tests.unit.operator.render.conftest import context_for


def test_configmap_holds_the_train_config(lora_cr):
    context = context_for(lora_cr, attempt=2)
    config_map = render(context)[0]
    assert config_map["metadata"]["name"] == "charts-lora-a2-train"
    assert list(config_map["data"]) == ["train.yaml"]
    assert load_train_config(config_map["data"]["train.yaml"]) == context.train_config
