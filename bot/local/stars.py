"""Telegram Stars payments for the Bot API core (local-mode emulator and the test fake).

The Bot API side of a Stars purchase, as documented for ``sendInvoice``,
``answerPreCheckoutQuery``, ``refundStarPayment`` and the ``SuccessfulPayment`` /
``RefundedPayment`` messages:

1. the bot sends an invoice (``currency="XTR"``, exactly one price, no provider token);
2. the user presses Pay: Telegram sends a ``pre_checkout_query`` update, which the bot must
   answer within 10 seconds (later answers fail with "query is too old");
3. after ``ok=True`` Telegram charges the Stars and sends a message with
   ``successful_payment`` (``telegram_payment_charge_id`` identifies the charge);
   ``ok=False`` shows the bot's ``error_message`` to the user and nothing is charged;
4. ``refundStarPayment(user_id, telegram_payment_charge_id)`` gives the Stars back once;
   again it fails with ``CHARGE_ALREADY_REFUNDED``, an unknown charge with
   ``CHARGE_NOT_FOUND``; a ``refunded_payment`` service message follows a refund.

Error descriptions not quoted in the Bot API documentation are this module's best rendering
of Telegram's upper-case error names.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass, field
from typing import Any, cast

PRE_CHECKOUT_TIMEOUT = 10.0  # seconds Telegram waits for answerPreCheckoutQuery
STARS = "XTR"
MAX_STARS = 100_000
QUERY_EXPIRED = "query is too old and response timeout expired or query ID is invalid"


@dataclass(slots=True)
class Invoice:
    chat_id: int
    message_id: int
    title: str
    description: str
    payload: str
    currency: str
    total_amount: int


@dataclass(slots=True)
class PreCheckout:
    id: str
    user: dict[str, Any]
    chat_id: int
    payload: str
    currency: str
    total_amount: int
    created: float
    complete: bool = True  # charge on ok=True (as Telegram does)
    answered: bool = False
    ok: bool | None = None
    error_message: str | None = None
    expired: bool = False
    charge_id: str | None = None


@dataclass(slots=True)
class StarCharge:
    charge_id: str
    user_id: int
    chat_id: int
    payload: str
    total_amount: int
    refunded: bool = False
    update: dict[str, Any] = field(default_factory=dict)  # the successful_payment update


def _flag(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


class StarsPayments:
    """Mixed into :class:`bot.local.emulator.BotApiCore` (which provides ``_known_chat``,
    ``_bot_message``, ``_add_message``, ``push_update``, ``message_dict``, ``clock`` and
    ``_bad_request``; this module imports nothing of it, so there is no import cycle)."""

    def _init_stars(self) -> None:
        self.invoices: dict[tuple[int, int], Invoice] = {}
        self.pre_checkout_queries: dict[str, PreCheckout] = {}
        self.star_charges: dict[str, StarCharge] = {}
        self._pcq_seq = itertools.count(1)

    # -- the bot's methods --------------------------------------------------------------------

    def _m_sendInvoice(self, params: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
        core: Any = self
        bad_request = core._bad_request
        chat_id = core._known_chat(params)
        title, description = str(params.get("title") or ""), str(params.get("description") or "")
        payload = str(params.get("payload") or "")
        if not 1 <= len(title) <= 32:
            raise bad_request("TITLE_INVALID")
        if not 1 <= len(description) <= 255:
            raise bad_request("DESCRIPTION_INVALID")
        if not 1 <= len(payload.encode()) <= 128:
            raise bad_request("INVOICE_PAYLOAD_INVALID")
        currency = str(params.get("currency") or "")
        prices = params.get("prices")
        if not isinstance(prices, list) or not prices:
            raise bad_request("can't parse prices JSON object")
        if currency != STARS:
            raise bad_request("PAYMENT_PROVIDER_INVALID")  # this emulator has no providers
        if params.get("provider_token") not in (None, ""):
            raise bad_request("PAYMENT_PROVIDER_INVALID")  # Stars take no provider token
        if len(prices) != 1:
            raise bad_request("STARS_INVOICE_INVALID")  # Stars invoices have exactly one price
        price = prices[0]
        amount = price.get("amount") if isinstance(price, dict) else None
        if not isinstance(price, dict) or not price.get("label"):
            raise bad_request("can't parse prices JSON object")
        if not isinstance(amount, int) or not 1 <= amount <= MAX_STARS:
            raise bad_request("CURRENCY_TOTAL_AMOUNT_INVALID")
        if _flag(params.get("is_flexible")) or params.get("max_tip_amount") not in (None, ""):
            raise bad_request("STARS_INVOICE_INVALID")  # no shipping or tips in Stars
        markup = params.get("reply_markup")
        if isinstance(markup, dict):
            rows = markup.get("inline_keyboard") or []
            first = rows[0][0] if rows and rows[0] else {}
            if not first.get("pay"):
                raise bad_request("REPLY_MARKUP_BUY_EMPTY")  # the first button must be Pay
        msg = core._bot_message(chat_id, params)
        invoice = {
            "title": title,
            "description": description,
            "start_parameter": str(params.get("start_parameter") or ""),
            "currency": currency,
            "total_amount": amount,
        }
        msg.media_fields = {"invoice": invoice}
        self.invoices[(chat_id, msg.message_id)] = Invoice(
            chat_id, msg.message_id, title, description, payload, currency, amount
        )
        core._touch()
        return core.message_dict(msg)

    def _m_answerPreCheckoutQuery(self, params: dict[str, Any], files: dict[str, Any]) -> bool:
        core: Any = self
        bad_request = core._bad_request
        query = self.pre_checkout_queries.get(str(params.get("pre_checkout_query_id") or ""))
        if query is None or query.answered or query.expired:
            raise bad_request(QUERY_EXPIRED)
        if core.clock() - query.created > PRE_CHECKOUT_TIMEOUT:
            query.expired = True  # Telegram gave up: the payment failed, nothing charged
            core._touch()
            raise bad_request(QUERY_EXPIRED)
        if "ok" not in params:
            raise bad_request("ok is required")
        ok = _flag(params.get("ok"))
        error_message = params.get("error_message") or None
        if not ok and not error_message:
            raise bad_request("ERROR_MESSAGE_EMPTY")
        query.answered, query.ok = True, ok
        query.error_message = None if ok else str(error_message)
        if ok and query.complete:
            self._charge(query)
        core._touch()
        return True

    def _m_refundStarPayment(self, params: dict[str, Any], files: dict[str, Any]) -> bool:
        bad_request = cast(Any, self)._bad_request
        try:
            user_id = int(params.get("user_id") or "")
        except (TypeError, ValueError):
            raise bad_request("invalid user_id specified") from None
        charge = self.star_charges.get(str(params.get("telegram_payment_charge_id") or ""))
        if charge is None or charge.user_id != user_id:
            raise bad_request("CHARGE_NOT_FOUND")
        if charge.refunded:
            raise bad_request("CHARGE_ALREADY_REFUNDED")
        charge.refunded = True
        refunded = {
            "currency": STARS,
            "total_amount": charge.total_amount,
            "invoice_payload": charge.payload,
            "telegram_payment_charge_id": charge.charge_id,
        }
        self._user_service_message(charge.chat_id, self._payer(charge), refunded_payment=refunded)
        return True

    # -- the user's side ----------------------------------------------------------------------

    def press_pay(
        self, user: dict[str, Any], chat_id: int, message_id: int, *, complete: bool = True
    ) -> dict[str, Any]:
        """The user presses Pay on the invoice ``message_id``: a ``pre_checkout_query`` update
        (queued for getUpdates and returned). With ``complete`` an ``ok=True`` answer charges
        the Stars and sends ``successful_payment``."""
        invoice = self.invoices.get((chat_id, message_id))
        if invoice is None:
            raise LookupError("no such invoice")
        return self.pre_checkout(
            user,
            payload=invoice.payload,
            total_amount=invoice.total_amount,
            currency=invoice.currency,
            chat_id=chat_id,
            complete=complete,
        )

    def pre_checkout(
        self,
        user: dict[str, Any],
        *,
        payload: str,
        total_amount: int,
        currency: str = STARS,
        chat_id: int | None = None,
        complete: bool = True,
    ) -> dict[str, Any]:
        """A ``pre_checkout_query`` with arbitrary contents (e.g. a forged payload)."""
        core: Any = self
        query_id = f"{user['id']}{next(self._pcq_seq):06d}"
        self.pre_checkout_queries[query_id] = PreCheckout(
            id=query_id,
            user=user,
            chat_id=int(user["id"]) if chat_id is None else chat_id,
            payload=payload,
            currency=currency,
            total_amount=total_amount,
            created=core.clock(),
            complete=complete,
        )
        update = {
            "pre_checkout_query": {
                "id": query_id,
                "from": user,
                "currency": currency,
                "total_amount": total_amount,
                "invoice_payload": payload,
            }
        }
        return core.push_update(update)

    def complete_payment(self, query_id: str) -> dict[str, Any]:
        """Charge a query answered ok that was started with ``complete=False`` (tests control
        when ``successful_payment`` arrives)."""
        query = self.pre_checkout_queries[query_id]
        if not query.ok:
            raise LookupError("the query was not answered ok")
        if query.charge_id is not None:
            return self.star_charges[query.charge_id].update
        return self._charge(query)

    def invoice_messages(self, chat_id: int) -> list[Invoice]:
        return [inv for (chat, _), inv in self.invoices.items() if chat == chat_id]

    # -- internals ----------------------------------------------------------------------------

    def _payer(self, charge: StarCharge) -> dict[str, Any]:
        for query in self.pre_checkout_queries.values():
            if query.charge_id == charge.charge_id:
                return query.user
        return {"id": charge.user_id, "is_bot": False, "first_name": "User"}

    def _charge(self, query: PreCheckout) -> dict[str, Any]:
        charge_id = f"stxFAKE{secrets.token_hex(12)}"
        query.charge_id = charge_id
        payment = {
            "currency": query.currency,
            "total_amount": query.total_amount,
            "invoice_payload": query.payload,
            "telegram_payment_charge_id": charge_id,
            "provider_payment_charge_id": f"{query.user['id']}_{len(self.star_charges) + 1}",
        }
        update = self._user_service_message(query.chat_id, query.user, successful_payment=payment)
        self.star_charges[charge_id] = StarCharge(
            charge_id,
            int(query.user["id"]),
            query.chat_id,
            query.payload,
            query.total_amount,
            update=update,
        )
        return update

    def _user_service_message(
        self, chat_id: int, user: dict[str, Any], **fields: Any
    ) -> dict[str, Any]:
        core: Any = self
        if chat_id not in core.chats:
            raise LookupError(f"no chat {chat_id} to deliver the payment message to")
        msg = core._add_message(chat_id, from_bot=False, sender=user, reply_to=None)
        msg.media_fields = dict(fields)
        return core.push_update({"message": core.message_dict(msg)})
