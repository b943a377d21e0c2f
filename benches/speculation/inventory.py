import json
from dataclasses import dataclass, field


@dataclass
class Item:
    name: str
    price: float
    quantity: int = 0
    tags: list = field(default_factory=list)


class Inventory:
    def __init__(self, path):
        self.path = path
        self.items = {}

    def load(self):
        with open(self.path) as handle:
            for row in json.load(handle):
                item = Item(row["name"], row["price"], row.get("quantity", 0))
                self.items[item.name] = item

    def add(self, name, price, quantity=1):
        item = self.items.get(name)
        if item is None:
            item = Item(name, price)
            self.items[name] = item
        item.quantity += quantity
        return item

    def remove(self, name, quantity=1):
        item = self.items[name]
        item.quantity = max(0, item.quantity - quantity)
        return item

    def total(self):
        total = 0.0
        for item in self.items.values():
            total += item.price * item.quantity
        return total
