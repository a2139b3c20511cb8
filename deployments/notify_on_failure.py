"""Create (or replace) the automation in notify-on-failure.yaml and the block it notifies.

    python deployments/notify_on_failure.py --webhook-url https://hooks.slack.com/services/T0/B0/XXX
    python deployments/notify_on_failure.py --block slack-webhook/ml-alerts

--webhook-url saves a Custom Webhook block, cifar-lit-failures, that POSTs {"text": subject and
body}: the shape Slack, Mattermost and Rocket.Chat incoming webhooks take. --block uses a
notification block you made in the UI instead (email, Teams, PagerDuty, ...). Without either
(nor $CIFAR_LIT_NOTIFY_URL / $CIFAR_LIT_NOTIFY_BLOCK) nothing is created.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from uuid import UUID

import yaml
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.events.schemas.automations import AutomationCore

SPEC = Path(__file__).with_name("notify-on-failure.yaml")
WEBHOOK_BLOCK = "cifar-lit-failures"


def notification_block(webhook_url: str | None, block: str | None) -> UUID:
    """The id of the block to notify: an existing one (``type-slug/name``), or a webhook block
    saved now."""
    if block:
        block_type, _, name = block.partition("/")
        with get_client(sync_client=True) as client:
            return client.read_block_document_by_name(name, block_type_slug=block_type).id
    # The URL is the credential (a Slack webhook URL lets anyone post): it lives in the block's
    # secrets, which Prefect masks wherever the block is read or shown, and fills in on sending.
    webhook = CustomWebhookNotificationBlock(
        name=WEBHOOK_BLOCK, url="{{webhook_url}}", secrets={"webhook_url": webhook_url},
        json_data={"text": "{{subject}}\n{{body}}"},
    )
    return webhook.save(WEBHOOK_BLOCK, overwrite=True)


def create_automation(block_id: UUID, spec_file: Path = SPEC) -> UUID:
    """Create the automation, replacing any of the same name, so re-running is safe."""
    spec = yaml.safe_load(spec_file.read_text())
    for action in spec["actions"]:
        action["block_document_id"] = str(block_id)
    automation = AutomationCore.model_validate(spec)
    with get_client(sync_client=True) as client:
        for old in client.read_automations_by_name(automation.name):
            client.delete_automation(old.id)
        return client.create_automation(automation)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--webhook-url", default=os.environ.get("CIFAR_LIT_NOTIFY_URL"))
    target.add_argument("--block", default=os.environ.get("CIFAR_LIT_NOTIFY_BLOCK"), help="slug/name of a block")
    args = parser.parse_args(argv)
    if not (args.webhook_url or args.block):
        print("No notification target (--webhook-url or --block): failure automation not created.")
        return
    automation_id = create_automation(notification_block(args.webhook_url, args.block))
    print(f"Automation {automation_id} notifies {args.block or WEBHOOK_BLOCK} when a training run fails.")


if __name__ == "__main__":
    main()
