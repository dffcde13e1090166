"""Build the batch upload ``orders.jsonl`` and ``validation.jsonl`` from ``emails.jsonl``.

Every company, person and order in this folder is fictional and was written for slot-queue.
``emails.jsonl`` holds one order e-mail per line with its ``custom_id`` and the ``expected``
form, for scoring the results. Run ``python examples/forms_ja/build.py`` after editing the
e-mails, the instruction or ``order.schema.json``; a test checks that the outputs are current.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

INSTRUCTION = (
    "あなたは受注担当です。注文メールを読み、JSONオブジェクトを1つだけ出力してください。"
    "キーは次の5つだけです：会社名（文字列）、品名（文字列）、数量（整数）、"
    "納期（YYYY-MM-DD形式の文字列）、担当者（氏名の文字列）。"
    "説明、前置き、コードブロックは書かないでください。\n"
    '出力例：{"会社名": "株式会社れい商会", "品名": "クリアファイルA4", "数量": 30, '
    '"納期": "2026-01-09", "担当者": "山田太郎"}'
)

#: Held-out order e-mails for the over-fitting check; they are not part of the batch.
VALIDATION_EMAILS = (
    "件名：封筒の注文\n\n株式会社ふたば商事の岡本です。\n長形3号封筒を2000枚、2026年2月27日までにお願いします。\n担当：岡本洋平",
    "いつもお世話になっております。しおさい食堂の村上です。\n米 10kgを12袋お願いします。納期は2026年1月19日です。\n担当：村上智子",
    "件名：電池購入\n\nつくし電子株式会社の長谷川です。\n単三アルカリ電池を240本、2026年3月12日納品でお願いします。\n担当者は長谷川翔太です。",
    "かえで歯科クリニックの近藤です。\n紙コップ 205mlを1000個注文します。\n納期：2026年2月9日\n担当：近藤麻衣",
)

#: Decoding and SLOT settings shared by every line (greedy, so reruns give the same output).
DEFAULTS = {
    "slot": {"steps": 3, "lr": 0.05},
    "generation": {"max_new_tokens": 96, "temperature": 0.0},
    "metadata": {"set": "forms_ja"},
}


def chat(email: str) -> list[dict[str, str]]:
    """Return the chat messages that ask for the form of one e-mail."""
    return [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": email}]


def build_lines() -> tuple[list[str], list[str]]:
    """Return the lines of ``orders.jsonl`` and of ``validation.jsonl``."""
    schema = json.loads((HERE / "order.schema.json").read_text(encoding="utf-8"))
    validation = [{"messages": chat(email)} for email in VALIDATION_EMAILS]
    header = {
        "batch": {
            "defaults": DEFAULTS,
            "response_format": {"type": "json_schema", "schema": schema},
            "validation_prompts": validation,
            "metadata": {"set": "forms_ja", "source": "examples/forms_ja"},
        }
    }

    orders = [json.dumps(header, ensure_ascii=False)]
    with open(HERE / "emails.jsonl", encoding="utf-8") as handle:
        for line in handle:
            email = json.loads(line)
            request = {"messages": chat(email["email"])}
            orders.append(json.dumps({"custom_id": email["custom_id"], "request": request}, ensure_ascii=False))
    return orders, [json.dumps(item, ensure_ascii=False) for item in validation]


def main() -> None:
    orders, validation = build_lines()
    (HERE / "orders.jsonl").write_text("\n".join(orders) + "\n", encoding="utf-8")
    (HERE / "validation.jsonl").write_text("\n".join(validation) + "\n", encoding="utf-8")
    print(f"wrote {len(orders) - 1} orders and {len(validation)} validation prompts")


if __name__ == "__main__":
    main()
