//! The service's "database": products, stock and orders in memory, with a
//! configurable latency per call and a call counter, so that the cache's
//! effect (one load for many readers) and the lock's (no oversold stock) can
//! be counted exactly.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A product as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Its price in cents.
    pub cents: u64,
}

/// An order placed at checkout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Its id (1, 2, ... in this process).
    pub id: u64,
    /// The buyer (the token's subject).
    pub user: String,
    /// Quantities by product id.
    pub items: BTreeMap<u64, u64>,
    /// The lock's fencing tokens of the products, by product id: a stalled
    /// checkout's late write would carry an older token.
    pub fencing: BTreeMap<u64, u64>,
}

#[derive(Debug)]
struct Row {
    product: Product,
    stock: u64,
}

/// The in-memory database.
#[derive(Debug)]
pub struct Database {
    rows: Mutex<BTreeMap<u64, Row>>,
    orders: Mutex<Vec<Order>>,
    product_loads: AtomicU64,
    latency: Duration,
    /// Orders whose confirmation e-mail was "sent" (by id, so an e-mail job
    /// that runs twice — jobs are at least once — sends one e-mail).
    emails: Mutex<std::collections::BTreeSet<u64>>,
}

impl Database {
    /// Products 1..=`products` ("product N", N × 100 cents), each with
    /// `stock` items; every call waits `latency` first.
    pub fn seeded(products: u64, stock: u64, latency: Duration) -> Database {
        let rows = (1..=products)
            .map(|id| {
                let product = Product {
                    id,
                    name: format!("product {id}"),
                    cents: id.saturating_mul(100),
                };
                (id, Row { product, stock })
            })
            .collect();
        Database {
            rows: Mutex::new(rows),
            orders: Mutex::new(Vec::new()),
            product_loads: AtomicU64::new(0),
            latency,
            emails: Mutex::new(std::collections::BTreeSet::new()),
        }
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Row>> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads product `id` (counted in [`product_loads`](Self::product_loads)).
    pub async fn load_product(&self, id: u64) -> Option<Product> {
        self.product_loads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.latency).await;
        self.rows().get(&id).map(|r| r.product.clone())
    }

    /// How many times a product was loaded.
    pub fn product_loads(&self) -> u64 {
        self.product_loads.load(Ordering::SeqCst)
    }

    /// Sets the price of `id`; the updated product, `None` when unknown.
    pub async fn set_price(&self, id: u64, cents: u64) -> Option<Product> {
        tokio::time::sleep(self.latency).await;
        let mut rows = self.rows();
        let row = rows.get_mut(&id)?;
        row.product.cents = cents;
        Some(row.product.clone())
    }

    /// Whether product `id` exists (no latency: an index lookup).
    pub fn exists(&self, id: u64) -> bool {
        self.rows().contains_key(&id)
    }

    /// The stock of `id` (`None`: unknown product).
    pub fn stock(&self, id: u64) -> Option<u64> {
        self.rows().get(&id).map(|r| r.stock)
    }

    /// Sets the stock of `id` (an admin's restock).
    pub fn set_stock(&self, id: u64, stock: u64) {
        if let Some(r) = self.rows().get_mut(&id) {
            r.stock = stock;
        }
    }

    /// Reads the stock of `id`, waits the latency, then writes it back
    /// minus `n` when there was enough: **not atomic on purpose** (a
    /// read-modify-write across a network call, as with a real database
    /// without row locks), so two concurrent checkouts without a lock could
    /// both succeed. Returns whether the stock was taken.
    pub async fn take_stock(&self, id: u64, n: u64) -> bool {
        let seen = self.stock(id).unwrap_or(0);
        tokio::time::sleep(self.latency).await;
        if seen < n {
            return false;
        }
        if let Some(r) = self.rows().get_mut(&id) {
            r.stock = seen - n;
        }
        true
    }

    /// Records an order and returns it with its id.
    pub fn place_order(
        &self,
        user: &str,
        items: BTreeMap<u64, u64>,
        fencing: BTreeMap<u64, u64>,
    ) -> Order {
        let mut orders = self.orders.lock().unwrap_or_else(|p| p.into_inner());
        let order = Order {
            id: u64::try_from(orders.len())
                .unwrap_or(u64::MAX)
                .saturating_add(1),
            user: user.to_string(),
            items,
            fencing,
        };
        orders.push(order.clone());
        order
    }

    /// Every order placed.
    pub fn orders(&self) -> Vec<Order> {
        self.orders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records the confirmation e-mail of `order` as sent; false when it
    /// already was (a job run again).
    pub fn send_email(&self, order: u64) -> bool {
        self.emails
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(order)
    }

    /// The orders whose e-mail was sent.
    pub fn emails_sent(&self) -> Vec<u64> {
        self.emails
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }
}
