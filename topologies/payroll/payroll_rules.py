"""Payroll rules for the payroll example: plain Python, called from the topology's expressions."""

TAX_RATE = 0.25


def pay_lines(lines: list[dict], batch: str) -> list[dict]:
    """One payment per timesheet line of ``batch``: gross = hours * rate, net after a flat tax, in cents."""
    payments = []
    for line in lines:
        gross_cents = round(line["hours"] * line["rate"] * 100)
        payments.append({
            "batch": batch,
            "employee": line["employee"],
            "gross_cents": gross_cents,
            "net_cents": round(gross_cents * (1 - TAX_RATE)),
        })
    return payments
