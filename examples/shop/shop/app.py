"""The shop app: six services behind one HTTP gateway."""

from __future__ import annotations

import cleave
from shop.access import ADMIN
from shop.contracts.billing import BillingV2
from shop.contracts.catalog import Catalog
from shop.contracts.inventory import Inventory
from shop.contracts.notifications import Notifications
from shop.contracts.orders import Orders, OrderView
from shop.contracts.shipping import Shipping
from shop.services.billing import BillingService
from shop.services.catalog import CatalogService
from shop.services.inventory import InventoryService
from shop.services.notifications import NotificationsService
from shop.services.orders import OrdersService
from shop.services.shipping import ShippingService


def _order_status(order: OrderView) -> int:
    # 201: the order reached its final state; 202: it is still being processed.
    return 202 if order.status == "pending" else 201


# Catalog reads are public; everything else needs a token (the default, auth="user"),
# and each owning service shows a customer only its own account (shop.access).
gateway = cleave.Gateway(title="Cleave shop", version="1.0.0")
gateway.get("/v1/products", Catalog.list_products, unwrap="products", auth="public")
gateway.get("/v1/products/{sku}", Catalog.get_product, auth="public")
gateway.get("/v1/inventory/{sku}", Inventory.get_stock, auth="public")
# The public API stays v1 while it calls billing's v2: the two version independently.
gateway.get("/v1/accounts", BillingV2.list_accounts, unwrap="accounts", auth=cleave.Scope(ADMIN))
gateway.get("/v1/accounts/{account_id}", BillingV2.get_account)
gateway.post(
    "/v1/orders",
    Orders.place_order,
    status=_order_status,
    statuses=(201, 202),
    idempotency_key=True,
    links={"GetOrder": Orders.get_order},  # its order_id, from the response
)
gateway.get("/v1/orders", Orders.list_orders, unwrap="orders")
gateway.get("/v1/orders/{order_id}", Orders.get_order)
gateway.get("/v1/shipments", Shipping.list_shipments, unwrap="shipments")
gateway.get("/v1/notifications", Notifications.list_notifications, unwrap="notifications")

app = cleave.App(
    "shop",
    services=[
        CatalogService,
        InventoryService,
        OrdersService,
        BillingService,
        ShippingService,
        NotificationsService,
    ],
    gateway=gateway,
)
