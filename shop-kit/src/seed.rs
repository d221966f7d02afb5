//! Deterministic seed data shared by the monolith and the services (same input, same rows).

/// How many rows of each kind the seed holds.
pub const PRODUCTS: i64 = 240;
pub const USERS: i64 = 60;
pub const ORDERS: i64 = 120;

/// Fixed epoch of the seed (2023-01-01T00:00:00Z) so timestamps never depend on the clock.
const SEED_EPOCH: i64 = 1_672_531_200;

const ADJECTIVES: &[&str] = &[
    "Classic", "Rustic", "Compact", "Deluxe", "Sturdy", "Sleek", "Vintage", "Modern", "Handmade", "Everyday",
];
const MATERIALS: &[&str] = &["Oak", "Steel", "Cotton", "Ceramic", "Leather", "Bamboo"];
/// (noun, category) pairs; the category follows from the noun.
const NOUNS: &[(&str, &str)] = &[
    ("Chair", "furniture"),
    ("Lamp", "lighting"),
    ("Mug", "kitchen"),
    ("Backpack", "bags"),
];
const FIRST_NAMES: &[&str] = &[
    "Ada", "Grace", "Linus", "Ken", "Barbara", "Edsger", "Margaret", "Dennis", "Frances", "Niklaus", "Radia", "Alan",
];
const LAST_NAMES: &[&str] = &["Lovelace", "Hopper", "Torvalds", "Thompson", "Liskov"];

#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    pub id: i64,
    pub sku: String,
    pub name: String,
    pub category: String,
    pub price_cents: i64,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stock {
    pub sku: String,
    pub on_hand: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub email: String,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrderItem {
    pub sku: String,
    pub name: String,
    pub quantity: i64,
    pub unit_price_cents: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub id: i64,
    pub user_id: i64,
    pub status: &'static str,
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Payment {
    pub id: i64,
    pub order_id: i64,
    pub amount_cents: i64,
    pub created_at: String,
}

/// The whole seed; every database takes the slices it owns.
#[derive(Debug, Clone)]
pub struct Seed {
    pub products: Vec<Product>,
    pub stock: Vec<Stock>,
    pub users: Vec<User>,
    pub orders: Vec<Order>,
    pub payments: Vec<Payment>,
}

/// splitmix64: tiny, fixed-seed, identical on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-ish integer in `lo..=hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        let span = (hi - lo + 1) as u64;
        lo + (self.next() % span) as i64
    }
}

/// The sku of product `id`: `SKU-0001` for 1.
pub fn sku(id: i64) -> String {
    format!("SKU-{id:04}")
}

/// Builds the seed. Pure: calling it twice gives equal data.
pub fn generate() -> Seed {
    let mut rng = Rng(0x005E_ED0F_5407);
    let mut products = Vec::new();
    let mut stock = Vec::new();
    for id in 1..=PRODUCTS {
        let i = (id - 1) as usize;
        let adjective = ADJECTIVES[i % ADJECTIVES.len()];
        let material = MATERIALS[(i / ADJECTIVES.len()) % MATERIALS.len()];
        let (noun, category) = NOUNS[(i / (ADJECTIVES.len() * MATERIALS.len())) % NOUNS.len()];
        let price_cents = rng.range(3, 400) * 100 - 1;
        products.push(Product {
            id,
            sku: sku(id),
            name: format!("{adjective} {material} {noun}"),
            category: category.to_string(),
            price_cents,
            description: format!(
                "A {} {} {} made of {}, built for years of daily use.",
                adjective.to_lowercase(),
                material.to_lowercase(),
                noun.to_lowercase(),
                material.to_lowercase()
            ),
        });
        // A few skus are sold out and some are scarce, so stock conflicts are easy to test.
        let on_hand = if id % 40 == 0 {
            0
        } else if id % 17 == 0 {
            rng.range(2, 9)
        } else {
            rng.range(10, 500)
        };
        stock.push(Stock { sku: sku(id), on_hand });
    }

    let users = (1..=USERS)
        .map(|id| {
            let i = (id - 1) as usize;
            let first = FIRST_NAMES[i % FIRST_NAMES.len()];
            let last = LAST_NAMES[(i / FIRST_NAMES.len()) % LAST_NAMES.len()];
            User {
                id,
                name: format!("{first} {last}"),
                email: format!("{}.{}{id}@example.com", first.to_lowercase(), last.to_lowercase()),
                created_at: crate::time::rfc3339(SEED_EPOCH + id * 86_400),
            }
        })
        .collect();

    let mut orders = Vec::new();
    let mut payments = Vec::new();
    for id in 1..=ORDERS {
        let user_id = rng.range(1, USERS);
        let lines = rng.range(1, 4);
        let mut items: Vec<OrderItem> = Vec::new();
        while (items.len() as i64) < lines {
            let product = &products[rng.range(0, PRODUCTS - 1) as usize];
            if items.iter().any(|item| item.sku == product.sku) {
                continue;
            }
            items.push(OrderItem {
                sku: product.sku.clone(),
                name: product.name.clone(),
                quantity: rng.range(1, 3),
                unit_price_cents: product.price_cents,
            });
        }
        let total_cents = items.iter().map(|item| item.quantity * item.unit_price_cents).sum();
        let placed = SEED_EPOCH + 90 * 86_400 + id * 3_600 * 7;
        let paid = rng.range(0, 2) != 0;
        if paid {
            payments.push(Payment {
                id: payments.len() as i64 + 1,
                order_id: id,
                amount_cents: total_cents,
                created_at: crate::time::rfc3339(placed + 3_600),
            });
        }
        orders.push(Order {
            id,
            user_id,
            status: if paid { "paid" } else { "pending" },
            items,
            total_cents,
            created_at: crate::time::rfc3339(placed),
        });
    }

    Seed {
        products,
        stock,
        users,
        orders,
        payments,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_deterministic_and_sized() {
        let a = generate();
        let b = generate();
        assert_eq!(a.products, b.products);
        assert_eq!(a.orders, b.orders);
        assert_eq!(a.products.len(), 240);
        assert_eq!(a.users.len(), 60);
        assert_eq!(a.orders.len(), 120);
        assert_eq!(a.products[0].sku, "SKU-0001");
        assert!(a.stock.iter().filter(|s| s.on_hand == 0).count() >= 3);
        assert!(a.stock.iter().all(|s| (0..=500).contains(&s.on_hand)));
        assert!(a
            .payments
            .iter()
            .all(|p| a.orders[(p.order_id - 1) as usize].status == "paid"));
        let names: std::collections::HashSet<_> = a.products.iter().map(|p| &p.name).collect();
        assert_eq!(names.len(), 240, "adjective x material x noun gives unique names");
    }
}
