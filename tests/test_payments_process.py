"""Stars payments through the real ``python -m bot`` process (long polling against FakeTelegram
on 127.0.0.1): /buy → invoice → Pay → pre-checkout answered → successful_payment → receipt; then
the bot is SIGKILLed, started again, and Telegram delivers the same payment once more: nothing
is added (the charge id is the key)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.process import USER_ID, bot_world, wait_until

LOCALE = json.loads((Path(__file__).resolve().parents[1] / "locales" / "en.json").read_text())
THANKS = LOCALE["pay.receipt"].split("{", 1)[0]  # "Thank you! "


async def test_buy_pay_crash_and_redelivery(tmp_path: Path) -> None:
    env = {"STAR_PACKAGES": "100:50", "FREE_DAILY_CREDITS": "0"}
    async with bot_world(tmp_path, price=0, balance=0, env=env) as world:
        await world.start()
        tg, user = world.tg, world.user
        user.send_command("/buy")
        invoice = await tg.wait_for_message(USER_ID, predicate=lambda m: m.invoice is not None)
        assert invoice.invoice["currency"] == "XTR" and invoice.invoice["total_amount"] == 50
        query = user.pay(invoice)
        answer = await tg.wait_for(
            lambda: user.pre_checkout_answer(query), timeout=10, what="the pre-checkout answer"
        )
        assert answer.ok is True
        receipt = await tg.wait_for_message(USER_ID, THANKS, timeout=15)
        assert answer.charge_id in receipt.content

        paid = tg.star_charges[answer.charge_id].update
        await world.kill()
        await world.start()
        redelivered = tg.push_update({"message": paid["message"]})
        await world.wait_update_confirmed(int(redelivered["update_id"]))
        await wait_until(  # the handler saw it (handlers/payments.py logs the duplicate)
            lambda: f"payment {answer.charge_id} seen before" in world.logs(),
            what="the redelivered payment to be handled",
        )
        await world.terminate()
        assert [m.content for m in tg.messages(USER_ID)].count(receipt.content) == 1
        problems, balance, held = await world.ledger()
        assert (problems, balance, held) == ([], 100, 0)
