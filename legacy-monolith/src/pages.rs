//! Server-rendered HTML pages of the legacy shop (home, product, account).

use std::fmt::Write;

use axum::extract::State;
use axum::response::Html;
use shop_kit::db::Db;
use shop_kit::extract::Path;
use shop_kit::ApiResult;

use crate::store;

/// Products shown on the home page.
const HOME_PRODUCTS: i64 = 12;

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn money(cents: i64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
}

fn layout(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{} - Legacy Shop</title></head>\
         <body><header><a href=\"/\">Legacy Shop</a></header><main>{body}</main></body></html>\n",
        escape(title)
    ))
}

pub async fn home(State(db): State<Db>) -> ApiResult<Html<String>> {
    let (products, total) = db.read(|c| store::products(c, 1, HOME_PRODUCTS)).await?;
    let mut body = format!("<h1>Welcome</h1><p>{total} products in the catalog.</p><ul>");
    for p in &products {
        let _ = write!(
            body,
            "<li><a href=\"/products/{}\">{}</a> {}</li>",
            p.id,
            escape(&p.name),
            money(p.price_cents)
        );
    }
    body.push_str("</ul>");
    Ok(layout("Home", &body))
}

pub async fn product(State(db): State<Db>, Path(id): Path<i64>) -> ApiResult<Html<String>> {
    let (product, stock) = db
        .read(move |c| {
            let product = store::product(c, id)?;
            let stock = store::stock(c, &product.sku)?;
            Ok((product, stock))
        })
        .await?;
    let body = format!(
        "<h1>{}</h1><p>{}</p><p>SKU {} &middot; {} &middot; {}</p><p>{} in stock</p>",
        escape(&product.name),
        escape(&product.description),
        escape(&product.sku),
        escape(&product.category),
        money(product.price_cents),
        stock.available
    );
    Ok(layout(&product.name, &body))
}

pub async fn account(State(db): State<Db>, Path(id): Path<i64>) -> ApiResult<Html<String>> {
    let (user, orders) = db
        .read(move |c| Ok((store::user(c, id)?, store::user_orders(c, id)?)))
        .await?;
    let mut body = format!(
        "<h1>{}</h1><p>{}</p><h2>Orders</h2><table><tr><th>Order</th><th>Status</th><th>Total</th></tr>",
        escape(&user.name),
        escape(&user.email)
    );
    for o in &orders {
        let _ = write!(
            body,
            "<tr><td>#{}</td><td>{}</td><td>{}</td></tr>",
            o.id,
            escape(&o.status),
            money(o.total_cents)
        );
    }
    body.push_str("</table>");
    Ok(layout(&user.name, &body))
}
