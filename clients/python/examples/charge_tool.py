"""An agent tool that charges a card, exactly once per intent.

Run against a running idem (``idem serve`` + ``idem worker``):
    IDEM_URL=http://127.0.0.1:8080 IDEM_TOKEN=... DATABASE_URL=postgres://... \
        python examples/charge_tool.py

1. The application's own transaction writes an invoice and enqueues its charge: both
   commit together or not at all (the transactional outbox).
2. A LangGraph ToolNode runs the charge tool the way a model's tool call would, twice
   under two tool-call ids (a re-planned step): one charge, one receipt.
"""

import json
import os
import uuid

import psycopg
from langchain_core.messages import AIMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode

from idem_client import IdemHttp, await_receipt, enqueue
from idem_client.langgraph import idem_tools

db, url, token = os.environ["DATABASE_URL"], os.environ["IDEM_URL"], os.environ["IDEM_TOKEN"]
thread = f"conversation-{uuid.uuid4()}"

# 1. Enqueue inside the application's transaction.
with psycopg.connect(db) as conn:
    with conn.transaction():
        conn.execute("CREATE TEMP TABLE invoices (id text, amount int)")
        conn.execute("INSERT INTO invoices VALUES ('inv-42', 4200)")
        action = enqueue(
            conn,
            "stripe.charge",
            {"amount": 4200, "currency": "usd", "customer": "cus_123"},
            scope=thread,
            intent="invoice inv-42 payment",
        )
    receipt = await_receipt(conn, action.action_id, timeout=30)
print("outbox charge:", receipt.state, receipt.receipt)

# 2. The same charge as an agent tool (the idem-specific lines are the two below).
tools = idem_tools(IdemHttp(url, token), cells=["stripe.charge"])
g = StateGraph(MessagesState)
g.add_node("tools", ToolNode(tools))  # in an agent, the model node routes here
g.add_edge(START, "tools")
g.add_edge("tools", END)
graph = g.compile()
args = {
    "amount": 1500,
    "currency": "usd",
    "customer": "cus_123",
    "description": None,
    "payment_method": None,
    "intent": "pay the annual plan",
}
for call_id in ["call_1", "call_2"]:  # the model re-plans the step under a new call id
    msg = AIMessage(content="", tool_calls=[{"name": "stripe_charge", "args": args, "id": call_id}])
    out = graph.invoke({"messages": [msg]}, config={"configurable": {"thread_id": thread}})
    answer = json.loads(out["messages"][-1].content)
    print(call_id, answer["state"], answer["action_id"], "repeated:", answer["repeated_call"])
