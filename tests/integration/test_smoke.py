from aiohttp import web


async def test_get_text(serve_app, session):
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request.query.get('name', '')}")

    app.router.add_get("/", hello)
    base = await serve_app(app)
    async with session.get(base + "/", params={"name": "x"}) as resp:
        assert resp.status == 200
        assert await resp.text() == "hello x"
